"""Tests of the padded sequence batcher (training/sequences.py) and SessionData.times."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.training.sequences import (
    PAD,
    Histories,
    SequenceBatch,
    SequenceBatcher,
    last_item_batches,
    last_item_inputs,
)
from recsys_pipeline.training.session_iterator import SessionData, sessions_from_frame

logger = logging.getLogger(__name__)


def make_data(lengths: list[int], n_items: int = 100, seed: int = 0, times: bool = True):
    """Sequences of the given lengths; event ``k`` happens at time ``1000 + 10 * k``."""
    rng = np.random.default_rng(seed)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    n = int(offsets[-1])
    return SessionData(
        items=rng.integers(0, n_items, n).astype(np.int64),
        offsets=offsets,
        first_time=np.zeros(len(lengths)),
        item_ids=np.arange(n_items) + 500,
        times=(1000 + 10 * np.arange(n, dtype=np.int64)) if times else None,
    )


def sequences_of(data: SessionData) -> list[np.ndarray]:
    return [data.items[a:b] for a, b in zip(data.offsets[:-1], data.offsets[1:], strict=True)]


def event_of(times: torch.Tensor) -> torch.Tensor:
    """Event index from the times of :func:`make_data`."""
    return (times - 1000) // 10


def all_batches(batcher: SequenceBatcher, epoch: int = 0) -> list[SequenceBatch]:
    return list(batcher.epoch(epoch))


def real_rows(batch: SequenceBatch, field: torch.Tensor) -> list[list[int]]:
    """Row-wise real positions of ``field`` (in order), padding dropped."""
    return [row[v].tolist() for row, v in zip(field, batch.valid, strict=True)]


def assert_batches_equal(a: list[SequenceBatch], b: list[SequenceBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for name in ("items", "lengths", "targets", "times", "mask", "target_times", "sequence"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None) == (v is None), name
            if u is not None:
                assert torch.equal(u, v), name


# -------------------------------------------------------------------------- SessionData.times


def test_sessions_from_frame_times_follow_events() -> None:
    frame = pl.DataFrame(
        {
            "SessionId": [2, 1, 2, 1, 3],
            "ItemId": [30, 10, 20, 40, 10],
            "Time": [5.7, 9.0, 4.2, 8.0, 1.0],
        }
    )
    data = sessions_from_frame(frame)
    # session 1: t=8 (40), t=9 (10); session 2: t=4.2 (20), t=5.7 (30); session 3: t=1
    np.testing.assert_array_equal(data.item_ids[data.items], [40, 10, 20, 30, 10])
    assert data.times is not None and data.times.dtype == np.int64
    np.testing.assert_array_equal(data.times, [8, 9, 4, 5, 1])
    np.testing.assert_array_equal(data.first_time, [8.0, 4.2, 1.0])  # unchanged behaviour

    stamps = frame.with_columns(
        pl.from_epoch((pl.col("Time") * 1000).cast(pl.Int64) + 1_600_000_000_000, "ms")
    )
    np.testing.assert_array_equal(
        sessions_from_frame(stamps).times, 1_600_000_000 + np.array([8, 9, 4, 5, 1])
    )
    assert sessions_from_frame(frame, with_times=False).times is None
    text = frame.with_columns(pl.col("Time").cast(pl.String))
    assert sessions_from_frame(text).times is None
    with pytest.raises(ValueError, match="with_times=True"):
        sessions_from_frame(text, with_times=True)


def test_session_data_without_times_still_constructs() -> None:
    data = SessionData(np.array([1, 2]), np.array([0, 2]), np.zeros(1), np.arange(3))
    assert data.times is None and data.n_targets == 1


# ---------------------------------------------------------------------------------- causal


@pytest.mark.parametrize("padding", ["left", "right"])
def test_causal_rows_match_naive_reference(padding: str) -> None:
    data = make_data([1, 2, 7, 4, 12, 3], seed=1)
    maxlen = 5
    batcher = SequenceBatcher(
        data,
        batch_size=100,
        maxlen=maxlen,
        padding=padding,
        shuffle=False,  # type: ignore[arg-type]
    )
    (batch,) = all_batches(batcher)
    expected = [s for s in sequences_of(data) if len(s) >= 2]
    assert batch.items.shape == (len(expected), maxlen)  # longest row: 12 items -> 5 inputs
    for row, seq in enumerate(expected):
        keep = seq[-(maxlen + 1) :]  # SASRec: the last maxlen + 1 items
        inputs, targets = keep[:-1], keep[1:]
        pad = [PAD] * (maxlen - len(inputs))
        if padding == "left":
            want_items, want_targets = pad + list(inputs), pad + list(targets)
        else:
            want_items, want_targets = list(inputs) + pad, list(targets) + pad
        assert batch.items[row].tolist() == want_items
        assert batch.targets[row].tolist() == want_targets
        assert batch.lengths[row] == len(inputs)
    np.testing.assert_array_equal(batch.sequence, [1, 2, 3, 4, 5])
    assert batch.mask is None
    assert batch.n_targets == sum(min(len(s) - 1, maxlen) for s in expected)
    assert batcher.n_targets() == batch.n_targets


def test_left_and_right_layout_by_hand() -> None:
    data = SessionData(
        items=np.array([5, 6, 7, 8, 1, 2]),
        offsets=np.array([0, 4, 6]),
        first_time=np.zeros(2),
        item_ids=np.arange(10),
        times=np.array([10, 20, 30, 40, 50, 60]),
    )
    left = next(SequenceBatcher(data, batch_size=2, maxlen=8, shuffle=False).epoch(0))
    assert left.items.tolist() == [[5, 6, 7], [PAD, PAD, 1]]
    assert left.targets.tolist() == [[6, 7, 8], [PAD, PAD, 2]]
    assert left.times.tolist() == [[10, 20, 30], [0, 0, 50]]
    assert left.target_times.tolist() == [[20, 30, 40], [0, 0, 60]]
    assert left.lengths.tolist() == [3, 1]
    assert left.valid.tolist() == [[True] * 3, [False, False, True]]
    right = next(
        SequenceBatcher(data, batch_size=2, maxlen=8, padding="right", shuffle=False).epoch(0)
    )
    assert right.items.tolist() == [[5, 6, 7], [1, PAD, PAD]]
    assert right.targets.tolist() == [[6, 7, 8], [2, PAD, PAD]]
    assert right.times.tolist() == [[10, 20, 30], [50, 0, 0]]
    assert right.valid.tolist() == [[True] * 3, [True, False, False]]
    fixed = next(
        SequenceBatcher(data, batch_size=2, maxlen=4, fixed_length=True, shuffle=False).epoch(0)
    )
    assert fixed.items.tolist() == [[PAD, 5, 6, 7], [PAD, PAD, PAD, 1]]


def test_maxlen_keeps_the_last_items() -> None:
    data = SessionData(
        items=np.arange(10),
        offsets=np.array([0, 10]),
        first_time=np.zeros(1),
        item_ids=np.arange(10),
    )
    causal = next(SequenceBatcher(data, batch_size=1, maxlen=3).epoch(0))
    assert causal.items.tolist() == [[6, 7, 8]] and causal.targets.tolist() == [[7, 8, 9]]
    assert causal.times is None and causal.target_times is None
    masked = next(SequenceBatcher(data, batch_size=1, maxlen=3, mode="masked").epoch(0))
    assert masked.items.tolist() == [[7, 8, 9]]


@pytest.mark.parametrize(("maxlen", "stride"), [(4, 4), (4, 2), (5, 1), (3, 3), (50, 50)])
def test_split_trains_every_target_exactly_once(maxlen: int, stride: int) -> None:
    lengths = [2, 3, 4, 5, 6, 9, 13, 17, 1, 40]
    data = make_data(lengths, seed=2)
    batcher = SequenceBatcher(
        data, batch_size=3, maxlen=maxlen, long="split", stride=stride, min_length=2, seed=5
    )
    trained: Counter[int] = Counter()
    for batch in batcher.epoch(0):
        labelled = batch.targets != PAD
        assert torch.equal(labelled & ~batch.valid, torch.zeros_like(labelled))
        target_event = event_of(batch.target_times)
        input_event = event_of(batch.times)
        # inputs of a row are consecutive events, each target the event after its input
        for events in real_rows(batch, input_event):
            assert events == list(range(events[0], events[0] + len(events)))
        assert torch.equal(target_event[batch.valid], input_event[batch.valid] + 1)
        assert torch.equal(
            batch.targets[labelled], torch.from_numpy(data.items)[target_event[labelled]]
        )
        # context of a labelled target: the inputs of its row up to it
        context = torch.cumsum(batch.valid.long(), dim=1)[labelled]
        seq_start = torch.from_numpy(data.offsets)[batch.sequence][:, None].expand_as(labelled)
        before = (target_event - seq_start)[labelled]  # items before the target in its sequence
        assert bool((context >= torch.clamp(before, max=maxlen - stride + 1)).all())
        trained.update(target_event[labelled].tolist())
    expected = [
        e for a, b in zip(data.offsets[:-1], data.offsets[1:], strict=True) for e in range(a + 1, b)
    ]
    assert sorted(trained) == expected and set(trained.values()) == {1}
    assert batcher.n_targets() == len(expected) == sum(b.n_targets for b in batcher.epoch(1))


def test_min_length_drops_short_sequences() -> None:
    data = make_data([1, 2, 3, 4, 5])
    assert SequenceBatcher(data, batch_size=8, maxlen=9).n_rows == 4
    assert SequenceBatcher(data, batch_size=8, maxlen=9, min_length=4).n_rows == 2
    assert SequenceBatcher(data, batch_size=8, maxlen=9, mode="masked", min_length=1).n_rows == 5
    with pytest.raises(ValueError, match="min_length"):
        SequenceBatcher(data, batch_size=8, maxlen=9, min_length=1)


# ------------------------------------------------------------------------- order, padding


@pytest.mark.parametrize("mode", ["causal", "masked"])
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("fixed_length", [False, True])
def test_pad_exactly_at_padding(mode: str, padding: str, fixed_length: bool) -> None:
    data = make_data([2, 3, 9, 4, 15, 6, 7, 2, 11], seed=3)
    batcher = SequenceBatcher(
        data,
        batch_size=4,
        maxlen=8,
        mode=mode,  # type: ignore[arg-type]
        padding=padding,  # type: ignore[arg-type]
        fixed_length=fixed_length,
        mask_prob=0.4,
        seed=1,
    )
    for batch in batcher.epoch(2):
        valid = batch.valid
        assert batch.items.dtype == torch.long and batch.targets.dtype == torch.long
        assert torch.equal(batch.items == PAD, ~valid)
        assert bool((batch.targets[~valid] == PAD).all())
        assert bool((batch.times[~valid] == 0).all()) and bool((batch.times[valid] > 0).all())
        assert torch.equal(valid.sum(1), batch.lengths)
        width = batch.items.shape[1]
        assert width == 8 if fixed_length else width == int(batch.lengths.max())
        if mode == "masked":
            assert not bool(batch.mask[~valid].any())
        if padding == "left":
            assert bool(valid[:, -1].all())
        else:
            assert bool(valid[:, 0].all())


def test_shuffle_covers_every_row_once_and_changes_per_epoch() -> None:
    data = make_data([3] * 50, seed=4)
    batcher = SequenceBatcher(data, batch_size=7, maxlen=5, seed=9)
    assert batcher.n_batches == 8
    orders = []
    for epoch in (0, 1):
        sequence = torch.cat([b.sequence for b in batcher.epoch(epoch)]).tolist()
        assert sorted(sequence) == list(range(50))
        orders.append(sequence)
    assert orders[0] != orders[1]
    plain = SequenceBatcher(data, batch_size=7, maxlen=5, shuffle=False)
    assert torch.cat([b.sequence for b in plain.epoch(3)]).tolist() == list(range(50))
    dropped = SequenceBatcher(data, batch_size=7, maxlen=5, drop_last=True)
    sizes = [len(b.lengths) for b in dropped.epoch(0)]
    assert sizes == [7] * 7 and dropped.n_batches == 7
    assert dropped.n_targets(0) == 49 * 2 == dropped.n_tokens(0)


def test_shuffle_once_streams_one_order_in_full_batches_as_pmixers_sampler() -> None:
    """``shuffle="once"`` (pmixer 9f6a02b's WarpSampler): one order drawn once, read as an
    endless stream of full batches, each epoch going on where the last one stopped; the
    default draws a new order every epoch (the flaw this reproduces)."""
    data = make_data([3] * 50, seed=4)
    batcher = SequenceBatcher(data, batch_size=7, maxlen=5, shuffle="once", seed=9)
    assert batcher.n_batches == 8
    epochs = [[b.sequence.tolist() for b in batcher.epoch(e)] for e in (1, 2, 3)]
    assert all(len(rows) == 7 for epoch in epochs for rows in epoch)  # never a short batch
    stream = [s for epoch in epochs for rows in epoch for s in rows]  # 3 x 56 rows
    first = stream[:50]
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert stream == (first * 4)[: len(stream)]  # the same order, again and again
    assert batcher.n_targets(2) == 56 * 2
    fresh = SequenceBatcher(data, batch_size=7, maxlen=5, seed=9)
    orders = [torch.cat([b.sequence for b in fresh.epoch(e)]).tolist() for e in (1, 2)]
    assert orders[0] != orders[1]
    with pytest.raises(ValueError, match="once"):
        SequenceBatcher(data, batch_size=7, maxlen=5, shuffle="once", bucket=4)


def test_bucketing_cuts_padding_and_keeps_rows() -> None:
    rng = np.random.default_rng(0)
    data = make_data(list(rng.integers(2, 60, 400)), seed=5)

    def padding_and_rows(bucket: int) -> tuple[int, list[int]]:
        batcher = SequenceBatcher(data, batch_size=16, maxlen=50, bucket=bucket, seed=3)
        batches = all_batches(batcher, 1)
        pads = sum(int((~b.valid).sum()) for b in batches)
        return pads, sorted(torch.cat([b.sequence for b in batches]).tolist())

    plain_pads, plain_rows = padding_and_rows(0)
    bucket_pads, bucket_rows = padding_and_rows(8)
    assert bucket_rows == plain_rows == list(range(400))
    assert bucket_pads < plain_pads / 3


# --------------------------------------------------------------------------------- masking


def expected_rate(n: int, p: float, min_one: str) -> float:
    """Expected share of a length-``n`` row selected by Bernoulli masking (exact enumeration)."""
    if n == 1:
        return 1.0
    total = 0.0
    for k in range(n + 1):
        chance = math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if min_one == "always":  # one more uniform position, then drop one if all are selected
            count = k + (n - k) / n
            full = (k == n) + (k == n - 1) / n
            total += chance * (count - full)
        else:
            total += chance * (1 if k == 0 else (n - 1 if k == n else k))
    return total / n


@pytest.mark.parametrize("min_one", ["if_none", "always"])
@pytest.mark.parametrize(("n", "p"), [(40, 0.2), (2, 0.3), (5, 0.3), (3, 0.9)])
def test_mask_rate_matches_expectation(n: int, p: float, min_one: str) -> None:
    data = make_data([n] * 4000, n_items=1000, seed=6)
    batcher = SequenceBatcher(
        data,
        batch_size=500,
        maxlen=n,
        mode="masked",
        mask_prob=p,
        min_one=min_one,  # type: ignore[arg-type]
    )
    counts = torch.cat([(b.targets != PAD).sum(1) for b in batcher.epoch(0)])
    assert int(counts.min()) >= 1 and int(counts.max()) <= n - 1  # at least one, never all
    rate = counts.double().mean().item() / n
    want = expected_rate(n, p, min_one)
    se = math.sqrt(want * (1 - want) / (n * 4000))
    assert abs(rate - want) < 5 * se + 1e-3, (rate, want)
    if n == 40 and min_one == "if_none":
        assert abs(rate - p) < 0.01  # long rows: mask_prob honoured
    if n == 40 and min_one == "always":  # Transformers4Rec: one more, (1 - p) of the time new
        assert abs(rate - (p + (1 - p) / n)) < 0.01


def test_unbounded_bernoulli_draw_selects_none_or_all_at_exactly_the_rate() -> None:
    """``min_one="never"``: the plain Bernoulli draw (Klenitskiy & Vasilev's BERT4Rec), so short
    rows select nothing or everything at their binomial odds and the rate is ``mask_prob``."""
    n, p, rows = 3, 0.4, 6000
    data = make_data([n] * rows, n_items=1000, seed=6)
    batcher = SequenceBatcher(
        data, batch_size=500, maxlen=n, mode="masked", mask_prob=p, min_one="never", seed=4
    )
    counts = torch.cat([(b.targets != PAD).sum(1) for b in batcher.epoch(0)]).double()
    for k, want in ((0, (1 - p) ** n), (n, p**n)):
        share = (counts == k).double().mean().item()
        assert abs(share - want) < 5 * math.sqrt(want * (1 - want) / rows), (k, share, want)
    assert abs(counts.mean().item() / n - p) < 5 * math.sqrt(p * (1 - p) / (n * rows))
    bounded = SequenceBatcher(
        data, batch_size=500, maxlen=n, mode="masked", mask_prob=p, min_one="if_none", seed=4
    )
    first, first_bounded = next(iter(batcher.epoch(0))), next(iter(bounded.epoch(0)))
    both = ((first.targets != PAD).sum(1) > 0) & ((first.targets != PAD).sum(1) < n)
    assert both.any()  # within the bounds the two rules draw the very same positions
    torch.testing.assert_close(first.targets[both], first_bounded.targets[both])
    with pytest.raises(ValueError, match="min_one='never' needs mask_count='bernoulli'"):
        SequenceBatcher(data, batch_size=500, maxlen=n, mode="masked", mask_count="fixed",
                        min_one="never")  # fmt: skip


def test_masked_targets_and_mask_replace_all() -> None:
    data = make_data([1, 2, 3, 8, 20], n_items=50, seed=7)
    batcher = SequenceBatcher(
        data, batch_size=2, maxlen=10, mode="masked", min_length=1, mask_prob=0.5, seed=2
    )
    for epoch in range(20):
        for batch in batcher.epoch(epoch):
            selected = batch.targets != PAD
            assert torch.equal(batch.mask, selected)  # replace="mask": every target masked
            assert torch.equal(batch.targets[selected], batch.items[selected])  # items kept
            counts = selected.sum(1)
            one = batch.lengths == 1
            assert bool((counts[one] == 1).all())  # a length-1 row: its only item (documented)
            assert bool((counts[~one] >= 1).all()) and bool((counts < batch.lengths)[~one].all())
            assert batch.target_times is None


def test_fixed_mask_count_is_bert4rec_round() -> None:
    lengths = [2, 3, 4, 7, 10, 25, 50]
    data = make_data(lengths * 30, seed=8)
    batcher = SequenceBatcher(
        data,
        batch_size=64,
        maxlen=50,
        mode="masked",
        mask_count="fixed",
        mask_prob=0.6,
        max_masked=20,
    )
    for batch in batcher.epoch(0):
        counts = (batch.targets != PAD).sum(1)
        n = batch.lengths
        want = torch.clamp(torch.round(n * 0.6).long(), max=20)
        want = torch.minimum(torch.clamp(want, min=1), n - 1)
        assert torch.equal(counts, want)


def test_mask_last_instances_select_only_the_last_item() -> None:
    data = make_data([30] * 2000, seed=9)
    only_last = SequenceBatcher(
        data, batch_size=256, maxlen=30, mode="masked", mask_last_prob=1.0, padding="right"
    )
    for batch in only_last.epoch(0):
        last = torch.arange(30)[None, :] == (batch.lengths - 1)[:, None]
        assert torch.equal(batch.targets != PAD, last)
    # mask_prob 0.9 on 30 items never selects only the last item by chance
    mixed = SequenceBatcher(
        data, batch_size=256, maxlen=30, mode="masked", mask_prob=0.9, mask_last_prob=0.3
    )
    rows = 0
    last_only = 0
    for batch in mixed.epoch(0):
        selected = batch.targets != PAD  # left padding: the last item is column L - 1
        is_last_only = (selected.sum(1) == 1) & selected[:, -1]
        last_only += int(is_last_only.sum())
        rows += len(selected)
    share = last_only / rows
    assert abs(share - 0.3) < 5 * math.sqrt(0.3 * 0.7 / rows)


def test_80_10_10_proportions() -> None:
    n_items = 5000
    data = make_data([50] * 2000, n_items=n_items, seed=10)
    batcher = SequenceBatcher(
        data, batch_size=250, maxlen=50, mode="masked", mask_prob=0.3, replace="80/10/10"
    )
    counts = Counter()
    for batch in batcher.epoch(0):
        selected = batch.targets != PAD
        assert not bool((batch.mask & ~selected).any())  # mask only at targets
        unselected_items_unchanged = batch.items[~selected & batch.valid]
        assert bool((unselected_items_unchanged >= 0).all())
        masked = batch.mask[selected]
        changed = batch.items[selected] != batch.targets[selected]
        counts["mask"] += int(masked.sum())
        counts["random"] += int((~masked & changed).sum())
        counts["keep"] += int((~masked & ~changed).sum())
        assert not bool((masked & changed).any())  # masked positions keep their item
    total = sum(counts.values())
    for key, want in (("mask", 0.8), ("random", 0.1 * (1 - 1 / n_items)), ("keep", 0.1)):
        assert abs(counts[key] / total - want) < 5 * math.sqrt(want * (1 - want) / total), key
    assert batcher.n_targets(0) == total


def test_masks_do_not_depend_on_padding_or_width() -> None:
    data = make_data([3, 9, 14, 5, 2, 8], seed=11)
    kinds = [
        {"padding": "left"},
        {"padding": "right"},
        {"padding": "right", "fixed_length": True},
    ]
    real_targets = []
    for kind in kinds:
        batcher = SequenceBatcher(
            data, batch_size=4, maxlen=16, mode="masked", replace="80/10/10", seed=4, **kind
        )
        real_targets.append(
            [(real_rows(b, b.targets), real_rows(b, b.items)) for b in batcher.epoch(1)]
        )
    assert real_targets[0] == real_targets[1] == real_targets[2]


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("mode", ["causal", "masked"])
def test_deterministic_per_seed_and_epoch(mode: str) -> None:
    data = make_data(list(np.random.default_rng(1).integers(1, 30, 300)), seed=12)

    def make(seed: int) -> SequenceBatcher:
        return SequenceBatcher(
            data,
            batch_size=32,
            maxlen=20,
            mode=mode,  # type: ignore[arg-type]
            bucket=4,
            mask_last_prob=0.1,
            replace="80/10/10",
            seed=seed,
        )

    first, second = make(7), make(7)
    list(second.epoch(5))  # another epoch first: no hidden state
    epoch3 = all_batches(first, 3)
    assert_batches_equal(epoch3, all_batches(second, 3))
    assert_batches_equal(epoch3[4:], list(second.epoch(3, start=4)))  # resume mid-epoch
    assert first.n_targets(3) == sum(b.n_targets for b in epoch3)
    assert first.n_tokens(3) == sum(int(b.lengths.sum()) for b in epoch3)
    epoch4 = all_batches(first, 4)
    assert not torch.equal(epoch3[0].sequence, epoch4[0].sequence)
    other_seed = all_batches(make(8), 3)
    assert not torch.equal(epoch3[0].sequence, other_seed[0].sequence)
    if mode == "masked":  # same rows in the same order, new masks
        fixed = SequenceBatcher(data, batch_size=300, maxlen=20, mode="masked", shuffle=False)
        a, b = next(fixed.epoch(0)), next(fixed.epoch(1))
        assert torch.equal(a.items, b.items) and not torch.equal(a.mask, b.mask)


# ------------------------------------------------------------------------------- times


@pytest.mark.parametrize("mode", ["causal", "masked"])
def test_times_aligned_with_items(mode: str) -> None:
    data = make_data([4, 12, 7, 1, 30], seed=13)
    batcher = SequenceBatcher(
        data,
        batch_size=2,
        maxlen=6,
        mode=mode,  # type: ignore[arg-type]
        long="split",
        replace="mask",
    )
    items = torch.from_numpy(data.items)
    for batch in batcher.epoch(0):
        valid = batch.valid
        assert torch.equal(items[event_of(batch.times)[valid]], batch.items[valid])
        if mode == "causal":
            assert torch.equal(
                event_of(batch.target_times)[valid], event_of(batch.times)[valid] + 1
            )
            assert bool((batch.target_times[~valid] == 0).all())
    no_times = make_data([4, 5], times=False)
    batch = next(SequenceBatcher(no_times, batch_size=2, maxlen=6).epoch(0))
    assert batch.times is None and batch.target_times is None


# -------------------------------------------------------------------------- evaluation rows


def small_eval_data() -> SessionData:
    return SessionData(
        items=np.array([5, 6, 7, 8, 1, 2, 9]),
        offsets=np.array([0, 4, 6, 7]),
        first_time=np.zeros(3),
        item_ids=np.arange(10),
        times=np.array([10, 20, 30, 40, 50, 60, 70]),
    )


def test_last_item_inputs_plain_and_held_out() -> None:
    data = small_eval_data()
    plain = last_item_inputs(data, 3)
    assert plain.items.tolist() == [[6, 7, 8], [PAD, 1, 2], [PAD, PAD, 9]]
    assert plain.targets.tolist() == [[PAD] * 3] * 3 and plain.n_targets == 0
    assert plain.times.tolist() == [[20, 30, 40], [0, 50, 60], [0, 0, 70]]
    # query time of the last position = the last event's own time (no target known)
    assert plain.target_times.tolist() == [[30, 40, 40], [0, 60, 60], [0, 0, 70]]
    assert plain.sequence.tolist() == [0, 1, 2] and plain.mask is None

    held = last_item_inputs(data, 2, "right", hold_out_last=True, sequences=np.array([1, 0]))
    assert held.items.tolist() == [[1, PAD], [6, 7]]
    assert held.targets.tolist() == [[2, PAD], [PAD, 8]]
    assert held.target_times.tolist() == [[60, 0], [30, 40]]  # the target's time at the end
    assert held.lengths.tolist() == [1, 2]
    with pytest.raises(ValueError, match="no history"):
        last_item_inputs(data, 3, hold_out_last=True)  # sequence 2 has one item


def test_last_item_inputs_masks() -> None:
    data = small_eval_data()
    last = last_item_inputs(data, 3, mask="last", fixed_length=True)
    assert last.items.tolist() == [[6, 7, 8], [PAD, 1, 2], [PAD, PAD, 9]]
    assert last.mask.tolist() == [[False, False, True]] * 3
    assert last.targets.tolist() == [[PAD, PAD, 8], [PAD, PAD, 2], [PAD, PAD, 9]]

    append = last_item_inputs(
        data, 3, "right", mask="append", hold_out_last=True, sequences=np.array([0, 1])
    )
    assert append.items.tolist() == [[6, 7, PAD], [1, PAD, PAD]]
    assert append.mask.tolist() == [[False, False, True], [False, True, False]]
    assert append.targets.tolist() == [[PAD, PAD, 8], [PAD, 2, PAD]]
    assert append.lengths.tolist() == [3, 2]
    assert append.times.tolist() == [[20, 30, 40], [50, 60, 0]]  # slot: the target's time
    assert append.valid.tolist() == [[True, True, True], [True, True, False]]

    inference = last_item_inputs(data, 3, mask="append")
    assert inference.items.tolist() == [[7, 8, PAD], [1, 2, PAD], [PAD, 9, PAD]]
    assert inference.n_targets == 0 and inference.mask[:, -1].all()
    assert inference.times[:, -1].tolist() == [40, 60, 70]  # slot: the last event's time

    chunks = list(last_item_batches(data, 3, batch_size=2, mask="append"))
    assert [len(c.lengths) for c in chunks] == [2, 1]
    assert torch.equal(torch.cat([c.sequence for c in chunks]), inference.sequence)
    assert torch.equal(chunks[0].items, inference.items[:2])


def test_histories_contains_and_pairs() -> None:
    data = make_data([5, 1, 8, 3], n_items=12, seed=14)
    seqs = sequences_of(data)
    for hold_out_last in (False, True):
        histories = Histories(data, hold_out_last=hold_out_last)
        sets = [set(s[:-1] if hold_out_last else s) for s in seqs]
        sequence = torch.tensor([0, 1, 2, 3, 2])
        items = torch.arange(-1, 12).repeat(5, 1)
        got = histories.contains(sequence, items)
        want = [[i in sets[s] for i in range(-1, 12)] for s in sequence.tolist()]
        assert got.tolist() == want
        rows, hist_items = histories.pairs(np.array([2, 0]))
        for row, s in enumerate([2, 0]):
            seq = seqs[s][:-1] if hold_out_last else seqs[s]
            assert hist_items[rows == row].tolist() == seq.tolist()


# ------------------------------------------------------------------------------- device/speed


def test_batch_to_device() -> None:
    data = make_data([3, 4])
    batch = next(SequenceBatcher(data, batch_size=2, maxlen=4, mode="masked").epoch(0))
    same = batch.to("cpu")
    assert same.items is batch.items and same.padding == batch.padding
    if torch.cuda.is_available():
        moved = SequenceBatcher(data, batch_size=2, maxlen=4, mode="masked", device="cuda")
        on_gpu = next(moved.epoch(0))
        assert on_gpu.items.is_cuda and on_gpu.valid.is_cuda
        assert torch.equal(on_gpu.items.cpu(), batch.items)


@pytest.mark.parametrize("mode", ["causal", "masked"])
def test_speed_sanity_vectorised_epoch(mode: str) -> None:
    """A 20k-sequence epoch runs through (time logged, not asserted)."""
    rng = np.random.default_rng(15)
    lengths = rng.integers(1, 120, 20_000)
    data = make_data(list(lengths), n_items=30_000, seed=15)
    batcher = SequenceBatcher(
        data,
        batch_size=256,
        maxlen=50,
        mode=mode,
        long="split",
        bucket=8,  # type: ignore[arg-type]
    )
    began = time.perf_counter()
    targets = sum(batch.n_targets for batch in batcher.epoch(0))
    seconds = time.perf_counter() - began
    logger.info("%s epoch: %d batches in %.2f s", mode, batcher.n_batches, seconds)
    if mode == "causal":
        assert targets == int((lengths - 1).sum())
    else:
        assert targets == batcher.n_targets(0)
