"""`kedro run --pipelines=preprocess_sequences`: user sequences -> leave-one-out splits."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
