"""User-based sampled and full ranking with hand-built scores (tie modes, exclusions)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.evaluation.user_baselines import UserCooccurrence, UserPopularity
from recsys_pipeline.evaluation.user_ranking import UserModel, full_ranking, sampled_ranking


class FixedScores:
    """A user model with a given score matrix ``[n_users, n_items]``."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = torch.as_tensor(scores, dtype=torch.float32)
        self.user_ids = np.arange(scores.shape[0]) + 100
        self.item_ids = np.arange(scores.shape[1]) + 500

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores[users]

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.scores[users.unsqueeze(1), items]


def _frame(pairs: list[tuple[int, int]]) -> pl.DataFrame:
    return pl.DataFrame(pairs, schema=["UserId", "ItemId"], orient="row")


# user 100: target item 500 (score 5); items 501, 502 score higher, 503, 504 tie with it
SCORES = np.array([[5, 9, 8, 5, 5, 1, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]], dtype=np.float32)


@pytest.mark.parametrize(
    ("mode", "rank"), [("standard", 3.0), ("conservative", 5.0), ("median", 4.0)]
)
def test_full_ranking_tie_modes(mode: str, rank: float) -> None:
    model = FixedScores(SCORES)
    assert isinstance(model, UserModel)
    res = full_ranking(
        model, _frame([(100, 500)]), cutoffs=(3, 20), mode=mode, progress=False, return_ranks=True
    )
    assert res.ranks.tolist() == [rank]
    assert res["mrr@20"] == pytest.approx(1 / rank)
    assert res["recall@3"] == float(rank <= 3)


def test_tiebreaking_is_seeded_and_in_range() -> None:
    model = FixedScores(SCORES)
    test = _frame([(100, 500)] * 50)
    a = full_ranking(model, test, mode="tiebreaking", seed=1, progress=False, return_ranks=True)
    b = full_ranking(model, test, mode="tiebreaking", seed=1, progress=False, return_ranks=True)
    np.testing.assert_array_equal(a.ranks, b.ranks)
    assert set(a.ranks.tolist()) == {3.0, 4.0, 5.0}


def test_full_ranking_excludes_known_items_but_never_the_target() -> None:
    model = FixedScores(SCORES)
    train = _frame([(100, 501), (100, 503), (100, 500)])  # target 500 also in train: kept
    res = full_ranking(model, _frame([(100, 500)]), train, mode="conservative",
                       progress=False, return_ranks=True)  # fmt: skip
    assert res.ranks.tolist() == [3.0]  # 502 higher, 504 tied
    assert res.excluded and "excluded" in res.label()
    # user 101, target 503 (score 3): 4 items higher; excluding 505 and 507 leaves 2
    res = full_ranking(model, _frame([(101, 503)]), _frame([(101, 505), (101, 507)]),
                       progress=False, return_ranks=True, user_chunk=1)  # fmt: skip
    assert res.ranks.tolist() == [3.0]


def test_full_ranking_drops_unknown_and_chunks_users() -> None:
    rng = np.random.default_rng(0)
    model = FixedScores(rng.integers(0, 4, size=(9, 30)).astype(np.float32))
    test = _frame([(100 + u, 500 + int(i)) for u in range(9) for i in rng.choice(30, 2)])
    test = pl.concat([test, _frame([(999, 500), (100, 9999)])])
    a = full_ranking(model, test, mode="median", user_chunk=2, progress=False)
    b = full_ranking(model, test, mode="median", user_chunk=100, progress=False)
    assert a["n_dropped"] == 2 and a["n_targets"] == 18 and a["n_users"] == 9
    assert a["ndcg@10"] == pytest.approx(b["ndcg@10"])


def test_sampled_ranking_uses_rank_at_most_10() -> None:
    # 3 users, 100 negatives each; the target beats all but 9 (rank 10), 10 (rank 11) or ties
    n_items = 102
    scores = np.zeros((3, n_items), dtype=np.float32)
    scores[:, 0] = 50.0
    scores[0, 1:10] = 60.0  # 9 higher -> rank 10: a hit
    scores[1, 1:11] = 60.0  # 10 higher -> rank 11: a miss
    scores[2, 1:12] = 50.0  # 11 ties: standard 1, conservative 12
    model = FixedScores(scores)
    test = _frame([(100 + u, 500) for u in range(3)])
    negs = _frame([(100 + u, 500 + i) for u in range(3) for i in range(1, 101)])
    res = sampled_ranking(model, test, negs, return_ranks=True)
    assert res.ranks.tolist() == [10.0, 11.0, 1.0]
    assert res["sampled100_hr@10"] == pytest.approx(2 / 3)
    assert res["sampled100_ndcg@10"] == pytest.approx((1 / np.log2(11) + 1) / 3)
    cons = sampled_ranking(model, test, negs, mode="conservative", return_ranks=True)
    assert cons.ranks.tolist() == [10.0, 11.0, 12.0]
    assert cons.label().startswith("sampled")


def test_baselines() -> None:
    train = _frame([(1, 10), (1, 11), (2, 10), (2, 12), (3, 10), (3, 11), (3, 13)])
    pop = UserPopularity().fit(train)
    assert pop.score_all(torch.tensor([0, 1])).tolist()[0] == [3.0, 2.0, 1.0, 1.0]
    cooc = UserCooccurrence().fit(train)
    # C = X^T X without the diagonal; user 2 (index 1) has items 10, 12
    dense = np.zeros((3, 4))
    dense[[0, 0, 1, 1, 2, 2, 2], [0, 1, 0, 2, 0, 1, 3]] = 1
    c = dense.T @ dense
    np.fill_diagonal(c, 0)
    expected = dense @ c
    np.testing.assert_allclose(cooc.score_all(torch.arange(3)).numpy(), expected)
    np.testing.assert_allclose(
        cooc.score(torch.tensor([1]), torch.tensor([[3, 1]])).numpy(), expected[[1]][:, [3, 1]]
    )


def test_user_popularity_counts_from_a_recent_part():
    """Every user of ``train`` is known; the scores are the popularity in ``counts_from``."""
    train = pl.DataFrame({"UserId": [1, 1, 2, 3, 3, 3], "ItemId": [10, 11, 10, 10, 11, 12]})
    recent = pl.DataFrame({"UserId": [3, 3, 2], "ItemId": [12, 11, 12]})
    pop = UserPopularity().fit(train, counts_from=recent)
    assert pop.user_ids.tolist() == [1, 2, 3] and pop.item_ids.tolist() == [10, 11, 12]
    assert pop.popularity.tolist() == [0.0, 1.0, 2.0]
    assert UserPopularity().fit(train).popularity.tolist() == [3.0, 2.0, 1.0]
