"""`kedro run --pipelines=preprocess_synthetic`: the preprocessing template bound to synthetic."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
