"""recommend(): shapes, order, raw ids, unknown items, exclude_seen, chunking, batching."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys_pipeline.models.baselines import LastItemCooccurrence
from recsys_pipeline.serving.recommend import recommend
from tests.models.behaviour import HistoryModel

# support 10: 3, 20: 4, 30: 3, 40: 1; transitions 10->20 x2, 20->30 x2, 30->10 x1
TRAIN = pl.DataFrame(
    {
        "SessionId": [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5],
        "ItemId": [10, 20, 30, 10, 20, 20, 30, 30, 10, 40, 20],
        "Time": list(range(11)),
    }
)


@pytest.fixture(scope="module")
def model() -> LastItemCooccurrence:
    return LastItemCooccurrence.fit(TRAIN)


def test_single_session(model) -> None:
    rec = recommend(model, [20], k=4)
    # after 20: 30 (2 + .25), then the popularity tie-break: 20 (.5), 10 (.25), 40 (0)
    assert rec.items.tolist() == [30, 20, 10, 40]
    np.testing.assert_allclose(rec.scores, [2.25, 0.5, 0.25, 0.0])
    assert rec.indices.tolist() == [2, 1, 0, 3]
    assert not rec.exclude_seen
    assert recommend(model, [20], k=2).items.tolist() == [30, 20]


def test_many_sessions_unknown_items_skipped(model) -> None:
    rec = recommend(model, [[20], [10, 20], [99, 30, 98]], k=3)
    assert rec.items.shape == rec.scores.shape == (3, 3)
    assert rec.items[0].tolist() == rec.items[1].tolist() == [30, 20, 10]  # last item decides
    assert rec.items[2].tolist() == [10, 20, 30]  # after 30: 10 (1.25), 20 (.5), 30 (.25)
    assert np.all(np.diff(rec.scores, axis=1) <= 0)
    two_d = recommend(model, np.array([[10, 20], [20, 20]]), k=3)
    assert two_d.items.shape == (2, 3)


def test_exclude_seen(model) -> None:
    rec = recommend(model, [10, 20], k=2, exclude_seen=True)
    assert rec.items.tolist() == [30, 40]
    assert rec.exclude_seen
    # fewer unseen items than k: the excluded ones come last with -inf
    rec = recommend(model, [10, 20, 30], k=4, exclude_seen=True)
    assert rec.items[0] == 40
    assert np.isneginf(rec.scores[1:]).all()


def test_k_capped_and_errors(model) -> None:
    assert recommend(model, [10], k=100).items.shape == (4,)
    with pytest.raises(ValueError, match="session 1"):
        recommend(model, [[10], [99, 98]])
    with pytest.raises(ValueError, match="session 0"):
        recommend(model, [99])
    with pytest.raises(ValueError, match="k must be positive"):
        recommend(model, [10], k=0)
    with pytest.raises(TypeError):
        recommend(model, [[10], 20])
    with pytest.raises(ValueError, match="session 0"):
        recommend(model, [[]])  # one empty session
    for none in ([], np.zeros(0, dtype=np.int64), np.zeros((0, 3), dtype=np.int64)):
        empty = recommend(model, none, k=2)  # no session at all: an empty result
        assert empty.items.shape == (0, 2) and empty.scores.shape == (0, 2)


def test_chunked_equals_unchunked(model) -> None:
    sessions = [[10], [20], [30], [40], [10, 30]]
    full = recommend(model, sessions, k=4)
    for chunk in (1, 2, 3):
        for exclude in (False, True):
            a = recommend(model, sessions, k=4, item_chunk=chunk, exclude_seen=exclude)
            b = recommend(model, sessions, k=4, exclude_seen=exclude)
            np.testing.assert_array_equal(a.scores, b.scores)
            np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(recommend(model, sessions, k=4, item_chunk=3).items, full.items)


def test_stateful_batching_matches_one_by_one() -> None:
    ids = np.array([f"i{j}" for j in range(6)])
    bonus = np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])  # distinct scores, no ties
    sessions = [["i0"], ["i1", "i2", "i2"], ["i3", "i1"], ["i5", "i5", "i5", "i4"], ["i2"]]
    batched = recommend(HistoryModel(ids, bonus), sessions, k=3, batch_size=4)
    for i, s in enumerate(sessions):
        one = recommend(HistoryModel(ids, bonus), s, k=3)
        np.testing.assert_array_equal(one.items, batched.items[i])
        np.testing.assert_allclose(one.scores, batched.scores[i])
    # the history (hence the state) of each session is exactly its own items
    assert batched.items[3].tolist() == ["i5", "i4", "i3"]
    assert batched.items[1].tolist() == ["i2", "i1", "i5"]
