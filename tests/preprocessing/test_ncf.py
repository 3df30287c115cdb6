"""NCF leave-last-out, sampled negatives and the global time split (hermetic + real ml-100k)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_pipeline.datasets.movielens import read_ratings
from recsys_pipeline.preprocessing import ncf
from recsys_pipeline.synthetic.ratings import RatingsConfig, generate_ratings

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"
SMALL = RatingsConfig(n_users=300, n_items=400, n_ratings=12_000, seed=5)


@pytest.fixture(scope="module")
def ratings() -> pl.DataFrame:
    return generate_ratings(SMALL)


@pytest.fixture(scope="module")
def split(ratings) -> ncf.NCFSplit:
    return ncf.ncf_split(ratings, ncf.NCFConfig(n_negatives=50, seed=1))


def frame(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["UserId", "ItemId", "Time"], orient="row")


def test_user_filter_keeps_users_with_at_least_20_ratings(ratings, split):
    counts = ratings.group_by("UserId").len()
    assert (counts["len"] < 20).any(), "the generator must make some users below the threshold"
    kept = set(counts.filter(pl.col("len") >= 20)["UserId"])
    assert set(split.test["UserId"]) == kept == set(split.train["UserId"])
    assert split.train.height + 2 * len(kept) == counts.filter(pl.col("len") >= 20)["len"].sum()


def test_leave_last_out_takes_last_two_by_time_then_item():
    rows = [(1, 10, 100), (1, 11, 200), (1, 12, 300), (1, 9, 300), (1, 13, 50)]
    rows += [(2, 5, 7), (2, 4, 7), (2, 3, 7)]  # all tied: ItemId decides
    train, valid, test = ncf.leave_last_out(frame(rows))
    assert test.rows() == [(1, 12, 300), (2, 5, 7)]
    assert valid.rows() == [(1, 9, 300), (2, 4, 7)]
    assert train.rows() == [(1, 13, 50), (1, 10, 100), (1, 11, 200), (2, 3, 7)]


def test_split_rows_are_partition_and_ordered(ratings, split):
    last = split.train.group_by("UserId").agg(pl.col("Time").max().alias("t"))
    both = split.valid.join(last, on="UserId").join(split.test, on="UserId", suffix="_test")
    assert (both["Time"] >= both["t"]).all()
    assert (both["Time_test"] >= both["Time"]).all()
    assert split.valid["UserId"].is_unique().all() and split.test["UserId"].is_unique().all()
    for df in (split.train, split.valid, split.test):
        assert df.columns == ["UserId", "ItemId", "Time"]
        assert df.dtypes == [pl.Int64] * 3
        assert df.equals(df.sort(["UserId", "Time", "ItemId"]))


def test_negatives_never_rated_distinct_and_per_user(ratings, split):
    positives = pl.concat([split.train, split.valid, split.test]).select("UserId", "ItemId")
    items = set(positives["ItemId"])
    for negatives in (split.test_negatives, split.valid_negatives):
        assert negatives.columns == ["UserId", "ItemId"]
        assert (negatives.group_by("UserId").len()["len"] == 50).all()
        assert negatives.n_unique() == negatives.height
        assert negatives.join(positives, on=["UserId", "ItemId"], how="semi").height == 0
        assert set(negatives["ItemId"]) <= items
        assert negatives["UserId"].n_unique() == split.test.height
    assert not split.test_negatives.equals(split.valid_negatives)


def test_negatives_deterministic_under_seed(ratings, split):
    again = ncf.ncf_split(ratings, ncf.NCFConfig(n_negatives=50, seed=1))
    assert again.test_negatives.equals(split.test_negatives)
    other = ncf.ncf_split(ratings, ncf.NCFConfig(n_negatives=50, seed=2))
    assert not other.test_negatives.equals(split.test_negatives)


def test_negatives_are_uniform_over_unrated_items():
    # one user rated items 0..4 of 0..19; 10 negatives of the 15 others, many times
    positives = frame([(1, i, i) for i in range(5)]).select("UserId", "ItemId")
    counts = np.zeros(20)
    for seed in range(400):
        neg = ncf.sample_negatives(positives, np.arange(20), 10, seed)
        assert neg.height == 10 and neg["ItemId"].n_unique() == 10
        counts[neg["ItemId"].to_numpy()] += 1
    assert counts[:5].sum() == 0
    assert np.allclose(counts[5:] / 400, 10 / 15, atol=0.08)


def test_too_few_unrated_items_is_a_clear_error():
    positives = frame([(1, i, i) for i in range(5)]).select("UserId", "ItemId")
    with pytest.raises(ValueError, match="fewer than 10 negatives"):
        ncf.sample_negatives(positives, np.arange(8), 10, 0)


def test_duplicates_keep_the_earliest_rating():
    df = frame([(1, 1, 5), (1, 1, 2), (1, 2, 3)])
    assert ncf.deduplicate_ratings(df).rows() == [(1, 1, 2), (1, 2, 3)]


def test_time_split_boundaries(ratings):
    cuts = ncf.time_cuts(ratings, test_fraction=0.1, valid_fraction=0.2)
    train, valid, test = ncf.time_split(ratings, **cuts)
    assert train.height + valid.height + test.height == ratings.height
    assert train["Time"].max() < cuts["cut_valid"] <= valid["Time"].min()
    assert valid["Time"].max() < cuts["cut_test"] <= test["Time"].min()
    assert abs(test.height / ratings.height - 0.1) < 0.01
    assert abs(valid.height / ratings.height - 0.2) < 0.01
    fixed = ncf.time_cuts(ratings, cut_test=cuts["cut_test"], cut_valid=cuts["cut_valid"] - 1)
    assert fixed == {"cut_valid": cuts["cut_valid"] - 1, "cut_test": cuts["cut_test"]}
    with pytest.raises(ValueError, match="after cut_test"):
        ncf.time_cuts(ratings, cut_test=10, cut_valid=20)


def test_config_rejects_impossible_parameters():
    with pytest.raises(ValueError, match="min_user_ratings"):
        ncf.NCFConfig(min_user_ratings=2)
    with pytest.raises(ValueError, match="test_fraction"):
        ncf.NCFConfig(test_fraction=0.6, valid_fraction=0.5)


def test_real_movielens_100k_ncf_statistics():
    path = REAL / "movielens_100k" / "u.data"
    if not path.is_file():
        pytest.skip(f"real data not available: {path} (the ../shared folder is absent)")
    ratings = read_ratings("ml-100k", path.parent)
    assert (ratings.height, ratings["UserId"].n_unique(), ratings["ItemId"].n_unique()) == (
        100_000,
        943,
        1_682,
    )
    split = ncf.ncf_split(ratings, ncf.NCFConfig())
    assert split.test.height == split.valid.height == 943  # every user has >= 20 ratings
    assert split.train.height == 100_000 - 2 * 943
    assert split.test_negatives.height == split.valid_negatives.height == 94_300
    cuts = ncf.time_cuts(ratings)
    assert cuts == {"cut_valid": 889_237_269, "cut_test": 891_382_309}
    heights = [df.height for df in ncf.time_split(ratings, **cuts)]
    assert heights == [79_999, 10_001, 10_000]


def test_validation_passes_and_names_broken_invariants(ratings, split):
    from recsys_pipeline.validation import DataValidationError, validate_rating_splits

    cuts = ncf.time_cuts(ratings)
    time_train, time_valid, time_test = ncf.time_split(ratings, **cuts)
    artifacts = {
        "ncf_train": split.train,
        "ncf_valid": split.valid,
        "ncf_test": split.test,
        "ncf_valid_negatives": split.valid_negatives,
        "ncf_test_negatives": split.test_negatives,
        "time_train": time_train,
        "time_valid": time_valid,
        "time_test": time_test,
    }
    kwargs = {"min_user_ratings": 20, "n_negatives": 50, **cuts}
    assert validate_rating_splits(artifacts, "synthetic", **kwargs)["success"] is True
    user = split.test["UserId"][0]
    rated = split.test.filter(pl.col("UserId") == user).select("UserId", "ItemId")
    broken = dict(artifacts)
    broken["ncf_test_negatives"] = pl.concat([split.test_negatives.slice(1), rated])
    broken["ncf_valid"] = pl.concat([split.valid, split.valid.head(1)])
    broken["time_test"] = pl.concat([time_test, time_train.head(1)])
    with pytest.raises(DataValidationError) as err:
        validate_rating_splits(broken, "synthetic", **kwargs)
    message = str(err.value)
    assert "'ncf_test_negatives': negatives_never_rated FAILED" in message
    assert f"offending UserId: [{user}]" in message
    assert "'ncf_valid': one_valid_row FAILED" in message
    assert "'time_test': time_test_at_or_after_cut_test FAILED" in message
    assert err.value.report["artifacts"]["ncf_train"]["success"] is True


def test_validation_of_the_time_split_alone(ratings):
    """``protocols=("time",)`` checks only the three time splits (retrain's new ratings)."""
    from recsys_pipeline.validation import DataValidationError, validate_rating_splits

    cuts = ncf.time_cuts(ratings)
    frames = dict(zip(("time_train", "time_valid", "time_test"), ncf.time_split(ratings, **cuts)))
    report = validate_rating_splits(frames, "new", protocols=("time",), **cuts)
    assert report["success"] and set(report["artifacts"]) == set(frames)
    late = frames["time_test"].tail(2)
    broken = frames | {"time_train": pl.concat([frames["time_train"], late])}
    with pytest.raises(DataValidationError) as err:
        validate_rating_splits(broken, "new", protocols=("time",), **cuts)
    message = str(err.value)
    assert "'time_train': train_before_cut_valid FAILED" in message
    assert str(late["UserId"][0]) in message  # the offending rows are shown
    with pytest.raises(ValueError, match="missing artifact"):
        validate_rating_splits(frames, "new", **cuts, min_user_ratings=20, n_negatives=5)
    with pytest.raises(ValueError, match="protocols must be"):
        validate_rating_splits(frames, "new", protocols=("leave-one-out",), **cuts)
