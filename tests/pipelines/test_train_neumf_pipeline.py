"""`kedro run --pipelines=train_neumf` end to end on synthetic ratings, and on the real ml-100k."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recsys_pipeline.synthetic.ratings import RatingsConfig, write_ratings
from tests.pipelines.conftest import catalog, run

ROOT = Path(__file__).resolve().parents[2]
ML100K = ROOT / ".." / "shared" / "data" / "real" / "movielens_100k" / "u.data"
TINY = {
    "neumf": {"movielens": {"factors": 8, "layers": [32, 16], "n_epochs": 2, "batch_size": 4096}}
}


def _check_outputs(project: Path) -> dict:
    cat = catalog(project)
    ncf = cat.load("movielens.neumf_ncf_metrics")
    assert set(ncf) == {"neumf", "popularity"}
    for values in ncf.values():  # legacy sampled metrics under their own name, and full ranking
        assert {"sampled100_hr@10", "sampled100_ndcg@10", "recall@10", "mrr@20"} <= set(values)
        assert 0 <= values["recall@10"] <= values["sampled100_hr@10"] <= 1
    time = cat.load("movielens.neumf_time_metrics")
    assert set(time) == {"neumf", "popularity", "cooccurrence"}
    assert all("sampled100_hr@10" not in v for v in time.values())
    model = cat.load("movielens.neumf_ncf_model")
    assert model.n_items == cat.load("movielens.ncf_train")["ItemId"].n_unique()
    assert len(cat.load("movielens.neumf_ncf_history")) == TINY["neumf"]["movielens"]["n_epochs"]
    folder = next((project / "data/06_models/movielens/neumf_ncf").glob("*/neumf_ncf"))
    assert "weights.pt" in {p.name for p in folder.iterdir()}
    return {"ncf": ncf, "time": time}


def test_train_neumf_end_to_end(project: Path):
    raw = project / "data" / "01_raw" / "movielens"
    write_ratings("ml-100k", raw, RatingsConfig(n_users=250, n_items=300, n_ratings=12_000, seed=3))
    run(project, "preprocess_movielens")
    run(project, "train_neumf", session={"runtime_params": TINY})
    _check_outputs(project)
    # with pretraining of the two branches, the NCF part only
    pretrain = {"neumf": {"movielens": TINY["neumf"]["movielens"] | {"pretrain": True}}}
    run(project, "train_neumf", tags=["ncf"], session={"runtime_params": pretrain})
    assert len(catalog(project).load("movielens.neumf_ncf_history")) == 2


@pytest.mark.slow
@pytest.mark.skipif(not ML100K.exists(), reason="../shared/data/real/movielens_100k is absent")
def test_neumf_beats_popularity_on_real_ml100k(project: Path):
    """Real ml-100k, the shipped parameters but 5 epochs: NeuMF beats popularity on the legacy
    sampled metric and on full ranking (NCF split and time split)."""
    raw = project / "data" / "01_raw" / "movielens"
    raw.mkdir(parents=True)
    shutil.copy(ML100K, raw / "u.data")  # into the test's scratch project only
    run(project, "preprocess_movielens")
    params = {"neumf": {"movielens": {"n_epochs": 5, "num_threads": 1}}}
    run(project, "train_neumf", session={"runtime_params": params})
    metrics = catalog(project).load("movielens.neumf_ncf_metrics")
    neumf, pop = metrics["neumf"], metrics["popularity"]
    assert neumf["sampled100_hr@10"] > pop["sampled100_hr@10"]
    assert neumf["recall@20"] > pop["recall@20"]
    time = catalog(project).load("movielens.neumf_time_metrics")
    assert time["neumf"]["recall@20"] > time["popularity"]["recall@20"]
