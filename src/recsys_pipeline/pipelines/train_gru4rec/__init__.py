"""GRU4Rec: train -> evaluate -> report -> recommend, per dataset."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
