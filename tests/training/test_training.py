"""Tests of the shared training machinery: device, session-parallel iterator, sampler,
sparse Adagrad with momentum and the epoch loop."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats

from recsys_pipeline.training.device import resolve_device
from recsys_pipeline.training.optim import IndexedAdagradM, clip_grad_norm
from recsys_pipeline.training.sampler import NegativeSampler, sampling_distribution
from recsys_pipeline.training.session_iterator import (
    SessionParallelIterator,
    plan_epoch,
    sessions_from_frame,
)
from recsys_pipeline.training.trainer import run_epoch

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ------------------------------------------------------------------------------------- device


def test_resolve_device_cpu_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_resolve_device_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu-please")


# ------------------------------------------------------------------------- session iterator


def _random_sessions(
    n_sessions: int, seed: int = 0, max_len: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """Sessions of 1..max_len events; the item of event ``k`` is ``k`` (every event unique)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n_sessions)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return np.arange(offsets[-1], dtype=np.int64), offsets


def _replay(iterator: SessionParallelIterator, order: np.ndarray) -> list[dict]:
    """Run the iterator, tracking the 'state' of every slot as (session, last event)."""
    steps = []
    slot_last: np.ndarray | None = None  # last input event fed in every slot
    for batch in iterator.epoch(order):
        inputs, targets = batch.inputs.numpy(), batch.targets.numpy()
        if slot_last is None:
            fresh = np.ones(len(inputs), dtype=bool)
        else:
            reset = np.zeros(len(slot_last), bool) if batch.reset is None else batch.reset.numpy()
            slot_last = np.where(reset, -1, slot_last)
            if batch.keep is not None:
                slot_last = slot_last[batch.keep.numpy()]
            fresh = slot_last == -1
        steps.append({"inputs": inputs, "targets": targets, "fresh": fresh, "prev": slot_last})
        slot_last = inputs.copy()
    return steps


def test_iterator_every_target_exactly_once_no_session_dropped() -> None:
    items, offsets = _random_sessions(203)
    it = SessionParallelIterator(items, offsets, batch_size=16)
    order = np.arange(len(offsets) - 1)
    steps = _replay(it, order)
    inputs = np.concatenate([s["inputs"] for s in steps])
    targets = np.concatenate([s["targets"] for s in steps])
    n_events, n_sessions = len(items), len(offsets) - 1
    assert len(targets) == n_events - n_sessions == it.n_targets
    # every (event, next event of the same session) pair exactly once
    expected = np.setdiff1d(np.arange(n_events), offsets[:-1])  # every non-first event
    np.testing.assert_array_equal(np.sort(targets), expected)
    np.testing.assert_array_equal(targets, inputs + 1)
    assert max(len(s["inputs"]) for s in steps) == 16


def test_iterator_resets_exactly_new_sessions_and_shrinks() -> None:
    items, offsets = _random_sessions(97, seed=1)
    session_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    first_event = np.zeros(len(items), dtype=bool)
    first_event[offsets[:-1]] = True
    it = SessionParallelIterator(items, offsets, batch_size=8)
    steps = _replay(it, np.arange(len(offsets) - 1))
    sizes = [len(s["inputs"]) for s in steps]
    assert sizes[0] == 8 and sizes[-1] < 8
    assert all(a >= b for a, b in zip(sizes, sizes[1:], strict=False))  # only ever shrinks
    for s in steps:
        # a slot is fresh (state zeroed) exactly when its input is the first event of a session
        np.testing.assert_array_equal(s["fresh"], first_event[s["inputs"]])
        if s["prev"] is not None:
            cont = ~s["fresh"]
            # continuing slots carry on with the very next event of the same session
            np.testing.assert_array_equal(s["inputs"][cont], s["prev"][cont] + 1)
            np.testing.assert_array_equal(
                session_of[s["inputs"][cont]], session_of[s["prev"][cont]]
            )


def test_iterator_session_order_and_single_event_sessions() -> None:
    # sessions: 0 (2 events), 1 (1 event), 2 (3 events), 3 (2 events)
    offsets = np.array([0, 2, 3, 6, 8])
    items = np.arange(8)
    plan = plan_epoch(items, offsets, np.array([3, 2, 1, 0]), batch_size=2)
    assert plan.n_targets == 8 - 4  # the single-event session gives no target
    first = plan.inputs[plan.step_offsets[0] : plan.step_offsets[1]]
    np.testing.assert_array_equal(first, [6, 3])  # sessions 3 and 2 enter first


def test_sessions_from_frame_sorts_and_orders_by_time() -> None:
    frame = pl.DataFrame(
        {
            "SessionId": [2, 1, 2, 1, 3],
            "ItemId": [30, 10, 20, 40, 10],
            "Time": [5, 9, 4, 8, 1],
        }
    )
    data = sessions_from_frame(frame)
    np.testing.assert_array_equal(data.item_ids, [10, 20, 30, 40])
    # session 1: t=8 (40), t=9 (10); session 2: t=4 (20), t=5 (30); session 3: 10
    np.testing.assert_array_equal(data.item_ids[data.items], [40, 10, 20, 30, 10])
    np.testing.assert_array_equal(data.offsets, [0, 2, 4, 5])
    np.testing.assert_array_equal(data.session_order(time_sort=True), [2, 1, 0])
    np.testing.assert_array_equal(data.support(), [2, 1, 1, 1])
    known = sessions_from_frame(frame, item_ids=np.array([10, 20]))
    assert known.n_events == 3


# ------------------------------------------------------------------------------------ sampler


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_sampler_frequencies_match_support_power(alpha: float) -> None:
    support = np.array([1, 5, 20, 100, 400, 0, 3, 50])
    gen = torch.Generator().manual_seed(0)
    sampler = NegativeSampler(support, n_sample=1000, alpha=alpha, store_size=50_000, generator=gen)
    draws = torch.cat([sampler.next() for _ in range(200)]).numpy()  # 200k draws, 4 refills
    counts = np.bincount(draws, minlength=len(support))
    assert counts[5] == 0  # zero support is never drawn
    expected_p = np.where(support > 0, support.astype(float) ** alpha, 0.0)
    expected_p /= expected_p.sum()
    nz = support > 0
    chi2 = stats.chisquare(counts[nz], expected_p[nz] * len(draws))
    assert chi2.pvalue > 1e-3, (counts, expected_p * len(draws))
    np.testing.assert_allclose(
        sampling_distribution(support, alpha).numpy(), expected_p, rtol=1e-12
    )


def test_sampler_store_views_and_refill() -> None:
    sampler = NegativeSampler(np.ones(10), n_sample=4, alpha=0.5, store_size=12)
    assert sampler.n_rows == 3
    rows = [sampler.next() for _ in range(3)]
    assert all(r.shape == (4,) and r.dtype == torch.long for r in rows)
    assert rows[1].data_ptr() == rows[0].data_ptr() + 4 * 8  # views into one store
    store = sampler._store
    sampler.next()  # used up -> refilled
    assert sampler._store is not store


def test_sampler_on_50k_items_draws_valid_ids() -> None:
    """A large catalogue builds and draws in range (its setup time is a benchmark figure, not
    a test: a timed assertion failed on a loaded machine)."""
    support = np.random.default_rng(0).integers(1, 10_000, size=50_000)
    sampler = NegativeSampler(support, n_sample=2048, alpha=0.5, store_size=2**20)
    drawn = sampler.draw(10_000)
    assert drawn.shape == (10_000,) and len(drawn.unique()) > 5_000
    assert int(drawn.min()) >= 0 and int(drawn.max()) < 50_000


# ---------------------------------------------------------------------------------- optimizer


def test_dense_adagrad_matches_formula() -> None:
    p = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    opt = IndexedAdagradM([p], lr=0.1)
    grads = [torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 1.0, -1.0])]
    expected, acc = p.detach().clone(), torch.zeros(3)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        acc += g**2
        expected -= 0.1 * g / torch.sqrt(acc + 1e-6)
    torch.testing.assert_close(p.detach(), expected)


def test_dense_adagrad_momentum_and_l2() -> None:
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = IndexedAdagradM([p], lr=0.1, momentum=0.5, lmbd=0.01)
    expected, acc, vel = p.detach().clone(), torch.zeros(2), torch.zeros(2)
    for g in [torch.tensor([0.5, -1.0]), torch.tensor([1.0, 3.0])]:
        p.grad = g.clone()
        opt.step()
        acc += g**2
        vel = 0.5 * vel - 0.1 * (g / torch.sqrt(acc + 1e-6) + 0.01 * expected)
        expected += vel
    torch.testing.assert_close(p.detach(), expected)


def test_row_updates_touch_only_given_rows_with_lazy_momentum() -> None:
    table = torch.arange(12, dtype=torch.float32).view(4, 3).clone()
    before = table.clone()
    opt = IndexedAdagradM([table], lr=0.1, momentum=0.9)
    rows = torch.tensor([1, 3])
    g = torch.ones(2, 3)
    opt.step_rows(table, rows, g)
    step1 = -0.1 * 1.0 / np.sqrt(1.0 + 1e-6)
    torch.testing.assert_close(table[[0, 2]], before[[0, 2]])
    torch.testing.assert_close(table[[1, 3]], before[[1, 3]] + step1)
    assert opt.acc[table][[0, 2]].abs().sum() == 0
    # second step touches row 1 only: row 3 keeps its velocity but is not moved (lazy)
    opt.step_rows(table, torch.tensor([1]), torch.ones(1, 3))
    step2 = 0.9 * step1 - 0.1 / np.sqrt(2.0 + 1e-6)
    torch.testing.assert_close(table[1], before[1] + step1 + step2)
    torch.testing.assert_close(table[3], before[3] + step1)


def test_sgd_adapt_and_grad_clipping() -> None:
    p = torch.tensor([1.0, 1.0], requires_grad=True)
    opt = IndexedAdagradM([p], lr=0.5, adapt="sgd")
    p.grad = torch.tensor([3.0, 4.0])
    norm = clip_grad_norm([p.grad], cap=1.0)
    assert float(norm) == pytest.approx(5.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]))
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.7, 0.6]))
    with pytest.raises(ValueError, match="adapt"):
        IndexedAdagradM([p], lr=0.1, adapt="adam")


# ---------------------------------------------------------------------------------- epoch loop


def test_run_epoch_weights_loss_by_targets() -> None:
    batches = [(1.0, 2), (4.0, 1)]
    stats_ = run_epoch(
        batches,
        lambda b: (torch.tensor(b[0]), b[1]),
        epoch=1,
        device=torch.device("cpu"),
        progress=False,
    )
    assert stats_.n_batches == 2 and stats_.n_targets == 3
    assert stats_.loss == pytest.approx((1.0 * 2 + 4.0 * 1) / 3)
    assert stats_.batches_per_s > 0 and stats_.targets_per_s > 0
    assert "loss" in stats_.summary() and "targets/s" in stats_.summary()


def test_run_epoch_nan_raises() -> None:
    batches = [1.0, float("nan"), 2.0]
    seen = []

    def step(b: float) -> tuple[torch.Tensor, int]:
        seen.append(b)
        return torch.tensor(b), 1

    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        run_epoch(batches, step, epoch=3, device=torch.device("cpu"), progress=False)
    assert len(seen) == 2  # stopped right at the NaN step on CPU
