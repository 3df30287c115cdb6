"""NeuMF (three variants) and the user baselines through the shared behavioural tests."""

from __future__ import annotations

import polars as pl

from recsys_pipeline.evaluation.user_baselines import UserCooccurrence, UserPopularity
from recsys_pipeline.models.neumf import NeuMF, NeuMFParams
from tests.models.user_behaviour import UserModelBehaviour

SMALL = (
    "factors=16,layers=32/16,dropout=0.0,batch_size=512,n_epochs=15,learning_rate=0.01,device=cpu"
)


class TestNeuMFBehaviour(UserModelBehaviour):
    variant = "neumf"
    extra = ""

    def make_model(self, train: pl.DataFrame) -> NeuMF:
        params = NeuMFParams.from_string(f"{SMALL},model={self.variant}{self.extra}")
        return NeuMF(params).fit(train, progress=False)


class TestGMFBehaviour(TestNeuMFBehaviour):
    variant = "gmf"


class TestMLPBehaviour(TestNeuMFBehaviour):
    variant = "mlp"
    extra = ",n_epochs=40"  # the MLP branch alone learns the groups more slowly


class TestUserCooccurrenceBehaviour(UserModelBehaviour):
    persistent = False

    def make_model(self, train: pl.DataFrame) -> UserCooccurrence:
        return UserCooccurrence().fit(train)


class TestUserPopularityBehaviour(UserModelBehaviour):
    """Popularity cannot learn groups: only the generic behaviour, a low bar."""

    min_recall_at_10 = 0.0
    persistent = False

    def make_model(self, train: pl.DataFrame) -> UserPopularity:
        return UserPopularity().fit(train)
