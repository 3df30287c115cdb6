"""``tune``: Optuna search, reports and the final retrain."""

from recsys_pipeline.pipelines.tune.pipeline import create_pipeline

__all__ = ["create_pipeline"]
