"""`kedro run --pipelines=preprocess_rsc15`: the preprocessing template bound to rsc15."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
