"""`kedro run --pipelines=preprocess_movielens` end to end on synthetic ratings (KedroSession)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys_pipeline.datasets.movielens import read_ratings
from recsys_pipeline.preprocessing import ncf
from recsys_pipeline.synthetic.ratings import RatingsConfig, write_ratings
from tests.pipelines.conftest import catalog, run

SMALL = RatingsConfig(n_users=250, n_items=300, n_ratings=10_000, seed=4)
NCF = ("ncf_train", "ncf_valid", "ncf_test", "ncf_valid_negatives", "ncf_test_negatives")
TIME = ("time_train", "time_valid", "time_test")


def test_preprocess_movielens_end_to_end(project: Path):
    raw = project / "data" / "01_raw" / "movielens"
    write_ratings("ml-100k", raw, SMALL)
    run(project, "preprocess_movielens")
    cat = catalog(project)
    out = {name: cat.load(f"movielens.{name}") for name in NCF + TIME}

    # the nodes give what the library gives on the same file
    params = cat.load("params:preprocess_movielens")
    config = ncf.NCFConfig(
        min_user_ratings=params["min_user_ratings"],
        n_negatives=params["n_negatives"],
        seed=params["seed"],
        **params["time_split"],
    )
    ratings = read_ratings("ml-100k", raw)
    expected = ncf.ncf_split(ratings, config)
    for name in NCF:
        assert out[name].equals(getattr(expected, name.removeprefix("ncf_"))), name
    cuts = ncf.time_cuts(ratings, config.test_fraction, config.valid_fraction)
    for name, frame in zip(TIME, ncf.time_split(ratings, **cuts), strict=True):
        assert out[name].equals(frame), name
        assert out[name].height > 0

    n_users = out["ncf_test"].height
    counts = ratings.group_by("UserId").len()
    assert n_users == (counts["len"] >= 20).sum() < counts.height
    assert out["ncf_test_negatives"].height == 100 * n_users
    stats = cat.load("movielens.stats")
    assert stats["artifacts"]["ncf_train"]["rows"] == out["ncf_train"].height
    assert stats["cuts"] == cuts == cat.load("movielens.time_cuts")
    report = cat.load("movielens.validation_report")
    assert report["success"] is True and set(report["artifacts"]) == set(NCF + TIME)
    assert cat.load("movielens.ratings").columns == ["UserId", "ItemId", "Rating", "Time"]


def test_preprocess_movielens_variant_parameter_and_missing_file(project: Path):
    raw = project / "data" / "01_raw" / "movielens"
    write_ratings("ml-20m", raw, SMALL, gzipped=True)
    session = {"runtime_params": {"preprocess_movielens": {"variant": "ml-20m"}}}
    run(project, "preprocess_movielens", session=session)
    assert catalog(project).load("movielens.stats")["variant"] == "ml-20m"

    session = {"runtime_params": {"preprocess_movielens": {"variant": "ml-1m"}}}
    with pytest.raises(Exception, match=r"ratings\.dat.*grouplens\.org"):
        run(project, "preprocess_movielens", session=session)


def test_preprocess_movielens_outputs_are_versioned(project: Path):
    write_ratings("ml-100k", project / "data" / "01_raw" / "movielens", SMALL)
    run(project, "preprocess_movielens")
    folder = project / "data" / "05_model_input" / "movielens" / "ncf_test.parquet"
    (version,) = [p.name for p in folder.iterdir()]
    frame = pl.read_parquet(folder / version / "ncf_test.parquet")
    assert frame.columns == ["UserId", "ItemId", "Time"]
