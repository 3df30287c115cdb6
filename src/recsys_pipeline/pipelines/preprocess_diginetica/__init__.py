"""`kedro run --pipelines=preprocess_diginetica`: the preprocessing template bound to diginetica."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
