"""The batched evaluation path (whole sequences through ``encode``) against the step path."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.evaluation import evaluate
from recsys_pipeline.evaluation.batched import encoder_rows
from recsys_pipeline.models.base import PAD, EncoderStepAdapter, NextItemModel, SequenceEncoder
from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
from recsys_pipeline.training.sequences import SequenceBatch
from tests.models.behaviour import successor_sessions


def _sessions(n_items: int, n_sessions: int, seed: int, max_len: int) -> pl.DataFrame:
    frame = successor_sessions(n_items, n_sessions, seed, min_len=2, max_len=max_len)
    rng = np.random.default_rng(seed)  # noise, so that ranks spread and ties occur
    noise = rng.random(frame.height) < 0.3
    ids = frame["ItemId"].to_numpy().copy()
    ids[noise] = rng.choice(np.unique(ids), noise.sum())
    return frame.with_columns(pl.Series("ItemId", ids))


@pytest.fixture(scope="module")
def gru(single_torch_thread):
    train = _sessions(60, 400, seed=1, max_len=12)
    params = GRU4RecParams.from_string("layers=16,n_epochs=1,batch_size=16,n_sample=8,device=cpu")
    return GRU4Rec(params).fit(train, progress=False), train


@pytest.mark.parametrize("mode", ["standard", "conservative", "median", "tiebreaking"])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_gru4rec_batched_ranks_equal_step_ranks(gru, mode, exclude_seen):
    model, _ = gru
    test = _sessions(60, 150, seed=2, max_len=30)
    kwargs = dict(mode=mode, exclude_seen=exclude_seen, progress=False, return_ranks=True)
    step = evaluate(model, test, path="step", **kwargs)
    batched = evaluate(model, test, path="batched", batch_size=7, **kwargs)
    assert step["n_targets"] == batched["n_targets"] > 500
    np.testing.assert_array_equal(step.ranks, batched.ranks)
    for name in step:  # the same ranks, summed in another order
        if name not in ("seconds", "targets_per_s"):
            assert batched[name] == pytest.approx(step[name], rel=1e-12), name


def test_gru4rec_batched_equal_with_item_chunks_and_user_histories(gru):
    model, train = gru
    test = _sessions(60, 120, seed=3, max_len=9).with_columns(
        (pl.col("SessionId") % 40).alias("UserId"), (pl.col("Time") + 10**6).alias("Time")
    )
    warmup = train.with_columns((pl.col("SessionId") % 40).alias("UserId"))
    kwargs = dict(warmup=warmup, item_chunk=13, progress=False, return_ranks=True)
    step = evaluate(model, test, path="step", **kwargs)
    batched = evaluate(model, test, path="batched", **kwargs)
    assert step.sequence_aware and batched.sequence_aware
    np.testing.assert_array_equal(step.ranks, batched.ranks)


class WindowEncoder:
    """A toy encoder with a context window: query at position t = sum over the visible items
    i <= t of tanh(E[item_i] + P[pos_i]), pos counted from the row's first item (prefix
    consistent) or from its last item (not: the query then depends on the row's length)."""

    def __init__(self, n_items: int, maxlen: int, padding: str, from_end: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.E = torch.randn(n_items, 6, generator=g)
        self.P = torch.randn(maxlen, 6, generator=g)
        self.item_ids = np.arange(n_items) + 4000
        self.maxlen, self.padding, self.uses_times = maxlen, padding, False
        self.prefix_consistent = not from_end
        self.calls = 0

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        self.calls += 1
        valid = batch.valid
        assert bool(((batch.items == PAD) == ~valid).all()), "PAD exactly at padding"
        n, width = batch.items.shape
        cols = torch.arange(width)
        first = (
            (width - batch.lengths) if batch.padding == "left" else torch.zeros(n, dtype=torch.long)
        )
        rel = cols[None, :] - first[:, None]  # position from the row's first item
        if not self.prefix_consistent:
            rel = (batch.lengths[:, None] - 1) - rel  # from the row's last item
        assert int(batch.lengths.max()) <= self.maxlen
        terms = torch.tanh(self.E[batch.items.clamp_min(0)] + self.P[rel.clamp(0, self.maxlen - 1)])
        terms = terms * valid[..., None]
        queries = terms.cumsum(dim=1)  # causal: positions <= t
        if last_only:
            last = first + batch.lengths - 1
            return queries[torch.arange(n), last]
        return queries

    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return query @ self.E[start:stop].T


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("from_end", [False, True])
def test_windowed_encoder_batched_equals_its_step_adapter(padding, from_end):
    model = WindowEncoder(50, maxlen=4, padding=padding, from_end=from_end)
    assert isinstance(model, SequenceEncoder)
    adapter = EncoderStepAdapter(model)
    assert isinstance(adapter, NextItemModel)
    test = _sessions(50, 80, seed=4, max_len=11)  # many sessions longer than maxlen + 1
    kwargs = dict(progress=False, return_ranks=True, exclude_seen=True, mode="conservative")
    step = evaluate(adapter, test, path="step", batch_size=5, **kwargs)
    batched = evaluate(model, test, path="auto", batch_size=6, **kwargs)  # auto: no step
    assert step["n_targets"] == batched["n_targets"] > 300
    np.testing.assert_array_equal(step.ranks, batched.ranks)


def test_a_length_dependent_encoder_declared_prefix_consistent_is_caught_by_the_comparison():
    """The comparison above has teeth: encoding whole rows of a model whose query depends on
    the row length (declared prefix-consistent by mistake) changes the ranks."""
    model = WindowEncoder(50, maxlen=4, padding="left", from_end=True)
    step = evaluate(
        EncoderStepAdapter(model), _sessions(50, 80, 4, 11), progress=False, return_ranks=True
    )
    model.prefix_consistent = True
    wrong = evaluate(model, _sessions(50, 80, 4, 11), progress=False, return_ranks=True)
    assert (step.ranks != wrong.ranks).any()


def test_encoder_rows_cover_every_target_once_with_at_most_maxlen_context():
    starts = np.array([0, 3, 10])
    ends = np.array([3, 10, 12])
    is_target = np.ones(12, dtype=bool)
    is_target[starts] = False
    for maxlen, consistent in [(None, True), (2, True), (3, True), (2, False), (None, False)]:
        row_start, row_len, tail = encoder_rows(starts, ends, is_target, maxlen, consistent)
        covered = []
        for a, n, t in zip(row_start, row_len, tail, strict=True):
            stream = np.searchsorted(starts, a, "right") - 1
            assert starts[stream] <= a and a + n < ends[stream] + 1
            assert maxlen is None or n <= maxlen
            positions = [a + n - 1] if t else range(a, a + n)
            covered += [p + 1 for p in positions if is_target[p + 1]]
            if t:  # a tail row holds the target's whole allowed context
                target = a + n
                assert n == (
                    target - starts[stream]
                    if maxlen is None
                    else min(maxlen, target - starts[stream])
                )
        assert sorted(covered) == list(np.flatnonzero(is_target)), (maxlen, consistent)


def test_models_without_encode_cannot_take_the_batched_path():
    from recsys_pipeline.models.baselines import MostPopular

    train = _sessions(20, 30, seed=5, max_len=5)
    model = MostPopular.fit(train)
    with pytest.raises(ValueError, match="no batched path"):
        evaluate(model, train, path="batched", progress=False)
    with pytest.raises(ValueError, match="path must be"):
        evaluate(model, train, path="fast", progress=False)
