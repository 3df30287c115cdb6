"""Behaviour every :class:`~recsys_pipeline.models.base.NextItemModel` must show, as a test base.

Use it by subclassing and implementing :meth:`NextItemModelBehaviour.make_model`::

    class TestMyModelBehaviour(NextItemModelBehaviour):
        min_recall_at_1 = 0.9

        def make_model(self, train: pl.DataFrame) -> NextItemModel:
            return MyModel.fit(train, n_epochs=5)

The data is a tiny deterministic sequence dataset with a known answer: item ``i`` is always
followed by item ``(i + 1) % n_items``. Raw item ids are a shuffled range (``4000 + perm[i]``)
so that a model confusing raw ids with indices fails. Tests: protocol conformance, learning the
successor (Recall@1 on held-out sessions), top-k shape/order/raw ids through ``recommend``,
chunked scores equal to unchunked ones, results independent of the evaluation batch size (i.e.
states are reset and shrunk correctly), and a save/load round trip with identical scores.

Also holds :class:`HistoryModel`, a protocol test double with an observable state.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.evaluation import evaluate
from recsys_pipeline.models.base import EncoderStepAdapter, NextItemModel, SequenceEncoder
from recsys_pipeline.serving.recommend import recommend


def successor_sessions(
    n_items: int,
    n_sessions: int,
    seed: int,
    first_session_id: int = 0,
    t0: int = 0,
    min_len: int = 3,
    max_len: int = 8,
) -> pl.DataFrame:
    """Sessions where item ``i`` is always followed by ``(i + 1) % n_items``; raw ids
    ``4000 + perm[i]`` (``perm`` fixed, seed 12345). Columns SessionId, ItemId, Time."""
    perm = np.random.default_rng(12345).permutation(n_items)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, n_sessions)
    first = rng.integers(0, n_items, n_sessions)
    sid = np.repeat(np.arange(n_sessions) + first_session_id, lengths)
    offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    idx = (np.repeat(first, lengths) + offset) % n_items
    return pl.DataFrame(
        {
            "SessionId": sid.astype(np.int64),
            "ItemId": (4000 + perm[idx]).astype(np.int64),
            "Time": (t0 + np.arange(len(idx))).astype(np.int64),
        }
    )


def successor_raw(n_items: int) -> dict[int, int]:
    """Raw id -> raw id of its successor in :func:`successor_sessions`."""
    perm = np.random.default_rng(12345).permutation(n_items)
    return {int(4000 + perm[i]): int(4000 + perm[(i + 1) % n_items]) for i in range(n_items)}


def stepper(model: Any) -> NextItemModel:
    """The step path of ``model``: itself, or an encoder's :class:`EncoderStepAdapter`."""
    return model if isinstance(model, NextItemModel) else EncoderStepAdapter(model)


class NextItemModelBehaviour(abc.ABC):
    """Shared behavioural tests; subclass as ``Test...`` and implement :meth:`make_model`."""

    #: items of the synthetic successor dataset
    n_items: int = 30
    #: training / held-out sessions
    n_train_sessions: int = 400
    n_test_sessions: int = 60
    #: Recall@1 the model must reach on the held-out sessions
    min_recall_at_1: float = 0.9
    #: allowed metric difference between evaluation batch sizes (the ranks of an exact model
    #: are identical, only the order of summation differs; a model with floating-point matmuls
    #: may differ in the last bit between batch shapes and flip a near-tie: raise it)
    batch_tolerance: float = 1e-12

    @abc.abstractmethod
    def make_model(self, train: pl.DataFrame) -> NextItemModel:
        """Fit the model under test on ``train`` (columns SessionId, ItemId, Time)."""

    def save_and_load(self, model: NextItemModel, path: Any) -> NextItemModel:
        """Round trip through the model's persistence; skips if it has none. Override if the
        model's API differs from ``model.save(path)`` / ``type(model).load(path)``."""
        if not (hasattr(model, "save") and hasattr(type(model), "load")):
            pytest.skip(f"{type(model).__name__} has no save/load")
        model.save(path)
        return type(model).load(path)

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture(scope="class")
    def data(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        train = successor_sessions(self.n_items, self.n_train_sessions, seed=1)
        test = successor_sessions(
            self.n_items, self.n_test_sessions, seed=2, first_session_id=10**6, t0=10**7
        )
        return train, test

    @pytest.fixture(scope="class")
    def model(self, data: tuple[pl.DataFrame, pl.DataFrame]) -> NextItemModel:
        return self.make_model(data[0])

    # ------------------------------------------------------------------ tests
    def test_implements_protocol(self, model: NextItemModel, data) -> None:
        assert isinstance(model, (NextItemModel, SequenceEncoder))
        assert model.n_items == len(model.item_ids) == self.n_items
        assert set(np.asarray(model.item_ids).tolist()) == set(data[0]["ItemId"].to_list())
        items = torch.arange(3, device=model.device)
        step = stepper(model)
        query, _ = step.step(items, step.initial_state(3))
        assert tuple(model.score(query, 0, model.n_items).shape) == (3, model.n_items)
        assert tuple(model.score(query).shape) == (3, model.n_items)

    def test_learns_successor(self, model: NextItemModel, data) -> None:
        result = evaluate(model, data[1], cutoffs=(1, 5), progress=False)
        expected = int((data[1].group_by("SessionId").len()["len"] - 1).sum())
        assert result["n_targets"] == expected
        assert result["recall@1"] >= self.min_recall_at_1, result

    def test_top_k_through_recommend(self, model: NextItemModel, data) -> None:
        test = data[1]
        sessions = [
            g["ItemId"].to_list() for _, g in test.group_by("SessionId", maintain_order=True)
        ]
        k = 5
        rec = recommend(model, sessions, k=k)
        assert rec.items.shape == rec.scores.shape == rec.indices.shape == (len(sessions), k)
        assert np.all(np.diff(rec.scores, axis=1) <= 0)
        assert np.array_equal(rec.items, np.asarray(model.item_ids)[rec.indices])
        successor = successor_raw(self.n_items)
        hits = np.mean([rec.items[i, 0] == successor[s[-1]] for i, s in enumerate(sessions)])
        assert hits >= self.min_recall_at_1
        one = recommend(model, sessions[0], k=k)
        assert one.items.shape == (k,)
        assert np.array_equal(one.items, rec.items[0])

    def test_chunked_scores_match(self, model: NextItemModel) -> None:
        n = model.n_items
        items = torch.tensor([0, 3, n - 1], device=model.device)
        step = stepper(model)
        query, _ = step.step(items, step.initial_state(3))
        full = model.score(query, 0, n)
        parts = torch.cat([model.score(query, a, min(a + 7, n)) for a in range(0, n, 7)], dim=1)
        torch.testing.assert_close(parts, full)

    def test_results_independent_of_batch_size(self, model: NextItemModel, data) -> None:
        base = evaluate(model, data[1], batch_size=512, progress=False)
        for bs in (1, 7):
            other = evaluate(model, data[1], batch_size=bs, item_chunk=11, progress=False)
            for key in ("recall@1", "mrr@20", "ndcg@20"):
                assert other[key] == pytest.approx(base[key], abs=self.batch_tolerance), key

    def test_save_load_roundtrip(self, model: NextItemModel, tmp_path) -> None:
        loaded = self.save_and_load(model, tmp_path / "model.bin")
        assert np.array_equal(np.asarray(loaded.item_ids), np.asarray(model.item_ids))
        items = torch.arange(min(5, model.n_items), device=model.device)
        model, loaded = stepper(model), stepper(loaded)
        q1, s1 = model.step(items, model.initial_state(len(items)))
        q1, _ = model.step(items.flip(0), s1)
        q2, s2 = loaded.step(items.to(loaded.device), loaded.initial_state(len(items)))
        q2, _ = loaded.step(items.flip(0).to(loaded.device), s2)
        assert torch.equal(model.score(q1).cpu(), loaded.score(q2).cpu())


class HistoryModel:
    """Protocol test double whose state is observable: the items fed since the last reset.

    State: a list (one per slot) of item-index lists. ``step`` appends and records every history
    it produces in :attr:`log`. Score of item ``j`` = how often ``j`` occurs in the history, plus
    ``bonus[j]`` (``[n_items]``, default 0) to break or create ties at will.
    """

    def __init__(self, item_ids: np.ndarray, bonus: np.ndarray | None = None) -> None:
        self.item_ids = np.asarray(item_ids)
        n = len(self.item_ids)
        self.bonus = (
            torch.zeros(n) if bonus is None else torch.as_tensor(bonus, dtype=torch.float32)
        )
        self.log: list[tuple[int, ...]] = []
        self.resets = 0

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def initial_state(self, batch_size: int) -> list[list[int]]:
        return [[] for _ in range(batch_size)]

    def reset_state(self, state: list[list[int]], finished: torch.Tensor) -> list[list[int]]:
        assert len(finished) == len(state)
        self.resets += int(finished.sum())
        return [[] if f else h for h, f in zip(state, finished.tolist(), strict=True)]

    def keep_state(self, state: list[list[int]], keep: torch.Tensor) -> list[list[int]]:
        return [state[i] for i in keep.tolist()]

    def step(
        self, items: torch.Tensor, state: list[list[int]]
    ) -> tuple[list[list[int]], list[list[int]]]:
        assert len(items) == len(state)
        new = [h + [i] for h, i in zip(state, items.tolist(), strict=True)]
        self.log.extend(tuple(h) for h in new)
        return new, new

    def score(
        self, query: list[list[int]], start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        stop = self.n_items if stop is None else stop
        out = self.bonus.repeat(len(query), 1)
        for r, h in enumerate(query):
            for i in h:
                out[r, i] += 1.0
        return out[:, start:stop].contiguous()


def assert_same_outputs_and_gradients(
    net: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, real: torch.Tensor
) -> None:
    """Two computations ``a``, ``b`` ``[B, L, D]`` of ``net``'s outputs agree at the ``real``
    positions, and so does every parameter's gradient of a random weighting of them."""
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(a[real])
    grads = []
    for out in (a, b):
        net.zero_grad()
        (out[real] * weights).sum().backward(retain_graph=True)
        grads.append({k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-5, rtol=1e-4, msg=name)
