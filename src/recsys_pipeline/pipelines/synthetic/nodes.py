"""Nodes writing seeded synthetic raw data: session events in a published raw format, and user
sequences in the ``pairs`` format (the ``synthetic_seq`` dataset of ``preprocess_sequences``)."""

from __future__ import annotations

import tempfile
from typing import Any

import polars as pl

from recsys_pipeline.kedro_ext.datasets import RawSource
from recsys_pipeline.synthetic.sequences import SequenceConfig, generate_sequences, pairs_frame
from recsys_pipeline.synthetic.sessions import SyntheticConfig, write_raw


def generate_raw(params: dict[str, Any]) -> RawSource:
    """Write the raw files to a scratch folder; the catalog moves them into place when complete."""
    config = SyntheticConfig(**params.get("config", {}))
    scratch = tempfile.mkdtemp(prefix="recsys-synthetic-")
    paths = write_raw(params["format"], scratch, config)
    return RawSource(params["format"], scratch, [p.name for p in paths])


def generate_sequences_raw(params: dict[str, Any]) -> pl.DataFrame:
    """User sequences as ``pairs`` rows (``UserId``, ``ItemId``); the catalog writes them as
    ``user item`` lines (``data/01_raw/synthetic_seq/sequences.txt``)."""
    return pairs_frame(generate_sequences(SequenceConfig(**params)))
