"""Generated raw data for the default pipeline."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
