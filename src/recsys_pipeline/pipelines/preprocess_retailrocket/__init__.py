"""`kedro run --pipelines=preprocess_retailrocket`: the preprocessing template bound to retailrocket."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
