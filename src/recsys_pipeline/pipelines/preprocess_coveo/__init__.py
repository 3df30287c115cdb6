"""`kedro run --pipelines=preprocess_coveo`: the preprocessing template bound to coveo."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
