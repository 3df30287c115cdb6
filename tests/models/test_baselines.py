"""MostPopular and LastItemCooccurrence: hand-computed scores and metrics, persistence,
behaviour."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.evaluation import evaluate
from recsys_pipeline.models.base import NextItemModel
from recsys_pipeline.models.baselines import LastItemCooccurrence, MostPopular
from tests.models.behaviour import NextItemModelBehaviour


def frame(sessions: list[list[int]], first_id: int = 0, t0: int = 0) -> pl.DataFrame:
    """SessionId/ItemId/Time frame of ``sessions`` (times increase in list order)."""
    rows = [(first_id + s, item) for s, items in enumerate(sessions) for item in items]
    return pl.DataFrame(
        {
            "SessionId": [r[0] for r in rows],
            "ItemId": [r[1] for r in rows],
            "Time": list(range(t0, t0 + len(rows))),
        }
    )


# support: 10 -> 3, 20 -> 4, 30 -> 3, 40 -> 1; transitions 10->20 x2, 20->30 x2, 30->10 x1
TRAIN = frame([[10, 20, 30], [10, 20], [20, 30], [30, 10], [40], [20]])
# targets: T1: 20 (after 10), 30 (after 20); T2: 40 (after 30); T3: 10 (after 20)
TEST = frame([[10, 20, 30], [30, 40], [20, 10]], first_id=100, t0=100)
CUTOFFS = (1, 2, 5)


def expected_metrics(ranks: list[float]) -> dict[str, float]:
    out = {}
    for k in CUTOFFS:
        out[f"recall@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        out[f"mrr@{k}"] = sum(1 / r for r in ranks if r <= k) / len(ranks)
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks)
    return out


def check(model: NextItemModel, mode: str, ranks: list[float]) -> None:
    result = evaluate(model, TEST, cutoffs=CUTOFFS, mode=mode, progress=False, return_ranks=True)
    np.testing.assert_array_equal(result.ranks, ranks)
    for key, value in expected_metrics(ranks).items():
        assert result[key] == pytest.approx(value, abs=1e-12), key
    assert result["n_targets"] == 4
    assert result["n_sessions"] == 3


# ---------------------------------------------------------------------------- MostPopular
@pytest.mark.parametrize(
    ("mode", "ranks"),
    [
        ("standard", [1, 2, 4, 2]),  # 30 and 10 tie at 3 behind 20
        ("conservative", [1, 3, 4, 3]),
        ("median", [1, 2.5, 4, 2.5]),
    ],
)
def test_most_popular_hand_metrics(mode: str, ranks: list[float]) -> None:
    check(MostPopular.fit(TRAIN), mode, ranks)


def test_most_popular_scores() -> None:
    model = MostPopular.fit(TRAIN)
    assert model.item_ids.tolist() == [10, 20, 30, 40]
    query, state = model.step(torch.tensor([0, 3]), model.initial_state(2))
    scores = model.score(query)
    assert scores.tolist() == [[3, 4, 3, 1]] * 2
    assert model.score(query, 1, 3).tolist() == [[4, 3]] * 2


def test_most_popular_tiebreaking_within_tie() -> None:
    result = evaluate(
        MostPopular.fit(TRAIN), TEST, mode="tiebreaking", progress=False, return_ranks=True
    )
    assert result.ranks[0] == 1 and result.ranks[2] == 4
    assert set(result.ranks[[1, 3]].tolist()) <= {2.0, 3.0}


# ---------------------------------------------------------------------------- co-occurrence
def test_cooccurrence_sparse_counts_and_tiebreak() -> None:
    model = LastItemCooccurrence.fit(TRAIN)
    assert model.item_ids.tolist() == [10, 20, 30, 40]
    assert model.indptr.tolist() == [0, 1, 2, 3, 3]
    assert model.indices.tolist() == [1, 2, 0]
    assert model.counts.tolist() == [2, 2, 1]
    assert model.dtype == torch.float32
    query, _ = model.step(torch.tensor([0, 1, 2, 3]), model.initial_state(4))
    scores = model.score(query)
    # support dense ranks: 40 -> 0, 10 & 30 -> 1, 20 -> 2, over 3 levels: bonus rank / 4
    bonus = [0.25, 0.5, 0.25, 0.0]
    expected = [
        [bonus[0], 2 + bonus[1], bonus[2], bonus[3]],
        [bonus[0], bonus[1], 2 + bonus[2], bonus[3]],
        [1 + bonus[0], bonus[1], bonus[2], bonus[3]],
        bonus,
    ]
    torch.testing.assert_close(scores, torch.tensor(expected))
    assert torch.floor(scores).tolist() == [[0, 2, 0, 0], [0, 0, 2, 0], [1, 0, 0, 0], [0] * 4]
    torch.testing.assert_close(model.score(query, 1, 3), scores[:, 1:3])
    torch.testing.assert_close(model._score_torch(query, 1, 3), scores[:, 1:3])
    torch.testing.assert_close(model._score_torch(query, 0, 4), scores)


@pytest.mark.parametrize("mode", ["standard", "conservative", "median", "tiebreaking"])
def test_cooccurrence_hand_metrics_tie_break(mode: str) -> None:
    # after 20: 30 (2.25) > 20 (.5) > 10 (.25) > 40 (0): no ties left
    check(LastItemCooccurrence.fit(TRAIN), mode, [1, 1, 4, 3])


@pytest.mark.parametrize(
    ("mode", "ranks"),
    [
        # T2: after 30 only 10 has a count; 40 ties with 20 and 30 at 0.
        # T3: after 20 only 30 has a count; 10 ties with 20 and 40 at 0.
        ("standard", [1, 1, 2, 2]),
        ("conservative", [1, 1, 4, 4]),
        ("median", [1, 1, 3, 3]),
    ],
)
def test_cooccurrence_hand_metrics_raw_counts(mode: str, ranks: list[float]) -> None:
    check(LastItemCooccurrence.fit(TRAIN, tie_break=False), mode, ranks)


def test_cooccurrence_ignores_cross_session_pairs_and_sorts_by_time() -> None:
    # rows out of time order; 30 ends session 0 and 40 starts session 1: no 30 -> 40 pair
    train = pl.DataFrame(
        {"SessionId": [0, 0, 1, 0, 1], "ItemId": [20, 10, 40, 30, 50], "Time": [2, 1, 5, 3, 6]}
    )
    model = LastItemCooccurrence.fit(train, tie_break=False)
    pairs = {
        (int(model.item_ids[r]), int(model.item_ids[model.indices[p]]))
        for r in range(model.n_items)
        for p in range(model.indptr[r], model.indptr[r + 1])
    }
    assert pairs == {(10, 20), (20, 30), (40, 50)}


def test_string_item_ids_and_save_load(tmp_path) -> None:
    train = TRAIN.with_columns(pl.format("item-{}", "ItemId").alias("ItemId"))
    test = TEST.with_columns(pl.format("item-{}", "ItemId").alias("ItemId"))
    for cls in (MostPopular, LastItemCooccurrence):
        model = cls.fit(train)
        path = tmp_path / f"{cls.__name__}.npz"
        model.save(path)
        loaded = cls.load(path)
        assert loaded.item_ids.tolist() == model.item_ids.tolist()
        a = evaluate(model, test, progress=False, return_ranks=True)
        b = evaluate(loaded, test, progress=False, return_ranks=True)
        np.testing.assert_array_equal(a.ranks, b.ranks)
        with pytest.raises(ValueError, match="not a"):
            (LastItemCooccurrence if cls is MostPopular else MostPopular).load(path)


def test_fit_rejects_bad_frames() -> None:
    with pytest.raises(ValueError, match="no column"):
        MostPopular.fit(TRAIN.drop("Time"))
    with pytest.raises(ValueError, match="empty"):
        LastItemCooccurrence.fit(TRAIN.head(0))


# ---------------------------------------------------------------------------- behaviour
class TestCooccurrenceBehaviour(NextItemModelBehaviour):
    min_recall_at_1 = 1.0

    def make_model(self, train: pl.DataFrame) -> NextItemModel:
        return LastItemCooccurrence.fit(train)


class TestMostPopularProtocol:
    """MostPopular cannot learn the successor; only the protocol parts of the behaviour apply."""

    def test_protocol_and_roundtrip(self, tmp_path) -> None:
        model = MostPopular.fit(TRAIN)
        assert isinstance(model, NextItemModel)
        model.save(tmp_path / "m")
        loaded = MostPopular.load(tmp_path / "m")
        q, _ = loaded.step(torch.tensor([1]), None)
        assert torch.equal(loaded.score(q), model.score(q))
