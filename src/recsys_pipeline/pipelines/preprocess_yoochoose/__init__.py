"""`kedro run --pipelines=preprocess_yoochoose`: the preprocessing template bound to yoochoose."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
