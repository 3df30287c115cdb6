"""``replay``: day-by-day fine-tune-and-evaluate protocol."""

from recsys_pipeline.pipelines.replay.pipeline import create_pipeline

__all__ = ["create_pipeline"]
