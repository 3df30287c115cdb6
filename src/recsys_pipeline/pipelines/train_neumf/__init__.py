"""``train_neumf``: NeuMF on MovieLens (NCF protocol and global time split)."""

from recsys_pipeline.pipelines.train_neumf.pipeline import create_pipeline

__all__ = ["create_pipeline"]
