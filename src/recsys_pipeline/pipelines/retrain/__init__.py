"""``retrain``: incoming data -> challenger -> champion/challenger decision."""

from recsys_pipeline.pipelines.retrain.pipeline import create_pipeline

__all__ = ["create_pipeline"]
