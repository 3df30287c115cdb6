"""Shared behavioural tests for user-item models (NeuMF, GMF, MLP, user baselines): the same
checks for every model, in the style of :mod:`tests.models.behaviour` for session models.

Subclass as ``Test...`` and implement :meth:`UserModelBehaviour.make_model`.
"""

from __future__ import annotations

import abc

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.evaluation.user_ranking import full_ranking, sampled_ranking


def group_ratings(
    n_groups: int = 4, items_per_group: int = 40, users_per_group: int = 30, seed: int = 0
) -> dict[str, pl.DataFrame]:
    """Users of group g rate only items of group g (12 in train, 1 in test, 100 negatives from
    other groups); raw ids users 100 + u, items 7000 + i. The known answer: a model that learns
    the groups ranks the test item among its group's ~28 unrated items."""
    rng = np.random.default_rng(seed)
    train, test, negatives = [], [], []
    n_items = n_groups * items_per_group
    for g in range(n_groups):
        group_items = np.arange(g * items_per_group, (g + 1) * items_per_group)
        others = np.setdiff1d(np.arange(n_items), group_items)
        for k in range(users_per_group):
            user = 100 + g * users_per_group + k
            chosen = rng.choice(group_items, 13, replace=False)
            train += [(user, 7000 + int(i), t) for t, i in enumerate(chosen[:12])]
            test.append((user, 7000 + int(chosen[12]), 12))
            negatives += [(user, 7000 + int(i)) for i in rng.choice(others, 100, replace=False)]
    schema = ["UserId", "ItemId", "Time"]
    return {
        "train": pl.DataFrame(train, schema=schema, orient="row"),
        "test": pl.DataFrame(test, schema=schema, orient="row"),
        "negatives": pl.DataFrame(negatives, schema=["UserId", "ItemId"], orient="row"),
    }


class UserModelBehaviour(abc.ABC):
    """Behaviour every user-item model must show."""

    #: full-ranking Recall@10 (train items excluded) the model must reach on the group data
    min_recall_at_10: float = 0.25
    #: whether the model has save(path) / load(path)
    persistent: bool = True

    @abc.abstractmethod
    def make_model(self, train: pl.DataFrame):
        """A fitted model."""

    @pytest.fixture(scope="class")
    def data(self) -> dict[str, pl.DataFrame]:
        return group_ratings()

    @pytest.fixture(scope="class")
    def model(self, data):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.make_model(data["train"])
        finally:
            torch.set_num_threads(threads)

    def test_vocabulary_and_score_shapes(self, model, data):
        assert sorted(model.item_ids.tolist()) == sorted(data["train"]["ItemId"].unique())
        users = torch.arange(5)
        scores = model.score_all(users)
        assert scores.shape == (5, model.n_items) and torch.isfinite(scores).all()

    def test_learns_the_known_answer(self, model, data):
        result = full_ranking(model, data["test"], exclude=data["train"], progress=False)
        assert result["n_targets"] == data["test"].height
        assert result["recall@10"] >= self.min_recall_at_10, result["recall@10"]

    def test_sampled_metrics_are_at_least_full_ranking(self, model, data):
        sampled = sampled_ranking(model, data["test"], data["negatives"], cutoffs=(10,))
        full = full_ranking(model, data["test"], exclude=data["train"], progress=False)
        # the 101 candidates are a subset of all items: a target's sampled rank <= its full rank
        assert sampled["sampled100_hr@10"] >= full["recall@10"] - 1e-12

    def test_results_do_not_depend_on_the_user_chunk(self, model, data):
        a = full_ranking(model, data["test"], exclude=data["train"], user_chunk=7, progress=False)
        b = full_ranking(model, data["test"], exclude=data["train"], user_chunk=500, progress=False)
        for key in ("recall@10", "mrr@20", "ndcg@5"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)

    def test_save_load_gives_identical_scores(self, model, tmp_path):
        if not self.persistent:
            pytest.skip("this model has no persistence")
        model.save(tmp_path / "m")
        loaded = type(model).load(tmp_path / "m")
        users = torch.arange(min(20, len(model.user_ids)))
        torch.testing.assert_close(loaded.score_all(users), model.score_all(users))
        assert loaded.item_ids.tolist() == model.item_ids.tolist()
