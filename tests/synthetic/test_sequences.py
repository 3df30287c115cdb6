"""Synthetic user sequences: seeded, the documented shape, a learnable first-order signal."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_pipeline.synthetic.sequences import SequenceConfig, generate_sequences, markov_chain

CONFIG = SequenceConfig(n_users=1_500, n_items=300, seed=11)


@pytest.fixture(scope="module")
def data() -> pl.DataFrame:
    return generate_sequences(CONFIG)


def test_seeded(data):
    assert generate_sequences(CONFIG).equals(data)
    assert not generate_sequences(SequenceConfig(n_users=1_500, n_items=300, seed=12)).equals(data)


def test_shape_lengths_and_times(data):
    assert data.schema == {"UserId": pl.Int64, "ItemId": pl.Int64, "Time": pl.Int64}
    assert data["UserId"].unique().sort().to_list() == list(range(1, CONFIG.n_users + 1))
    assert data["ItemId"].min() >= 1 and data["ItemId"].max() <= CONFIG.n_items
    lengths = data.group_by("UserId").len().sort("UserId")["len"]
    short = lengths[: CONFIG.n_short_users]
    assert short.is_in([1, 2]).all()
    assert lengths[CONFIG.n_short_users :].min() >= CONFIG.min_length
    assert lengths.max() <= CONFIG.max_length
    assert lengths.max() > 4 * lengths.median()  # heavy tail
    assert abs(lengths.mean() - CONFIG.mean_length) < 2
    per_user = data.with_columns(pl.col("Time").diff().over("UserId").alias("gap"))
    assert per_user["gap"].drop_nulls().min() == 0  # equal times exist ...
    assert (per_user["gap"].drop_nulls() >= 0).all()  # ... and times never decrease


def test_transitions_follow_the_chain(data):
    chain = markov_chain(CONFIG)
    pairs = data.with_columns(pl.col("ItemId").shift(-1).over("UserId").alias("next")).drop_nulls()
    prev, nxt = pairs["ItemId"].to_numpy(), pairs["next"].to_numpy()
    in_chain = (chain.successors[prev - 1] == nxt[:, None]).any(axis=1)
    # p_follow of the steps follow the chain, plus noise that hits a successor by chance
    noise_hit = chain.popularity[chain.successors[prev - 1] - 1].sum(axis=1).mean()
    expected = CONFIG.p_follow + (1 - CONFIG.p_follow) * noise_hit
    assert abs(in_chain.mean() - expected) < 0.02
    # a last-item model learnt from counts beats popularity by far (the signal is learnable)
    counts = np.zeros((CONFIG.n_items + 1, CONFIG.n_items + 1))
    half = len(prev) // 2
    np.add.at(counts, (prev[:half], nxt[:half]), 1)
    top_markov = np.argsort(-counts, axis=1)[:, :4]
    hit_markov = (top_markov[prev[half:]] == nxt[half:, None]).any(axis=1).mean()
    top_pop = np.argsort(-np.bincount(nxt[:half], minlength=CONFIG.n_items + 1))[:4]
    hit_pop = np.isin(nxt[half:], top_pop).mean()
    assert hit_markov > 0.6
    assert hit_pop < 0.3


def test_bad_configs():
    with pytest.raises(ValueError, match="n_successors"):
        SequenceConfig(n_items=3, n_successors=3)
    with pytest.raises(ValueError, match="min_length"):
        SequenceConfig(min_length=0)
    with pytest.raises(ValueError, match="n_short_users"):
        SequenceConfig(n_users=5, n_short_users=6)
