"""Alias of ``train`` with GRU4Rec only (``--namespaces=<dataset>`` as before)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
