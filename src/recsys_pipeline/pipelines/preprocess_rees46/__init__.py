"""`kedro run --pipelines=preprocess_rees46`: the preprocessing template bound to rees46."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
