"""`kedro run --pipelines=preprocess_movielens`: MovieLens ratings -> NCF and time splits."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
