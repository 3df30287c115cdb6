"""``train_gru4rec``: the training template with GRU4Rec only (an alias kept for existing
command lines: ``kedro run --pipelines=train_gru4rec --namespaces=<dataset>``)."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from recsys_pipeline.pipelines.train.pipeline import create_pipeline as train


def create_pipeline(**kwargs) -> Pipeline:
    """``train`` restricted to the model ``gru4rec`` (namespaces ``<dataset>.gru4rec``)."""
    return train(models=("gru4rec",))
