"""Training template: train -> evaluate (with baselines) -> report -> recommend, per dataset x
next-item model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
