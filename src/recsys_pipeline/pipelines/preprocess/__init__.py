"""Preprocessing template, instantiated per dataset."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
