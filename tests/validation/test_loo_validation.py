"""Great Expectations suite of the leave-one-out splits: passes on the library's split, names the
broken check, artifact and users for each kind of wrong split."""

from __future__ import annotations

import polars as pl
import pytest

from recsys_pipeline.preprocessing.sequences import leave_one_out
from recsys_pipeline.validation import DataValidationError
from recsys_pipeline.validation.sequences import validate_loo_splits

SCHEMA = {"UserId": pl.Int64, "ItemId": pl.Int64, "Time": pl.Int64}
SEQUENCES = pl.DataFrame(
    [(1, 10, 0), (2, 20, 0), (2, 21, 1), (3, 30, 0), (3, 31, 1), (3, 32, 2)]
    + [(4, 40, 5), (4, 41, 7), (4, 43, 7), (4, 42, 9)],
    schema=SCHEMA,
    orient="row",
)


def artifacts(**changes: pl.DataFrame) -> dict[str, pl.DataFrame]:
    loo = leave_one_out(SEQUENCES)
    frames = {
        "sequences": SEQUENCES,
        "loo_train": loo.train,
        "loo_valid": loo.valid,
        "loo_test": loo.test,
    }
    return {**frames, **changes}


def test_correct_split_passes():
    report = validate_loo_splits(artifacts(), "tiny", min_items=3)
    assert report["success"] is True and report["evaluated_users"] == 2
    assert set(report["artifacts"]) == {"sequences", "loo_train", "loo_valid", "loo_test"}
    assert all(e["success"] for a in report["artifacts"].values() for e in a["expectations"])


def failed(frames: dict[str, pl.DataFrame], min_items: int = 3) -> dict[str, set[str]]:
    with pytest.raises(DataValidationError) as err:
        validate_loo_splits(frames, "tiny", min_items=min_items)
    assert "Data validation failed for dataset 'tiny'" in str(err.value)
    return {
        name: {e["check"] for e in a["expectations"] if not e["success"]}
        for name, a in err.value.report["artifacts"].items()
        if not a["success"]
    }


def test_valid_and_test_swapped_breaks_order():
    loo = leave_one_out(SEQUENCES)
    got = failed(artifacts(loo_valid=loo.test, loo_test=loo.valid))
    assert got == {"loo_train": {"order_kept"}, "loo_test": {"test_not_before_valid"}}


def test_missing_test_row_and_extra_valid_row_for_a_short_user():
    loo = leave_one_out(SEQUENCES)
    short_valid = pl.concat([loo.valid, SEQUENCES.filter(pl.col("UserId") == 2).tail(1)])
    with pytest.raises(DataValidationError, match=r"offending UserId: \[2\]"):
        validate_loo_splits(artifacts(loo_valid=short_valid), "tiny", min_items=3)
    got = failed(artifacts(loo_test=loo.test.filter(pl.col("UserId") != 4)))
    assert got == {
        "loo_train": {"every_event_once", "order_kept"},
        "loo_test": {"one_test_row_per_evaluated_user", "loo_test_size"},
    }


def test_unsorted_sequences_and_wrong_types():
    unsorted = SEQUENCES.with_columns(
        pl.when(pl.col("ItemId") == 40).then(99).otherwise(pl.col("Time")).alias("Time")
    )
    assert "time_non_decreasing" in failed(artifacts(sequences=unsorted))["sequences"]
    loo = leave_one_out(SEQUENCES)
    got = failed(artifacts(loo_test=loo.test.with_columns(pl.col("ItemId").cast(pl.Float64))))
    assert got == {"loo_test": {"ItemId_kind"}}


def test_holdout_test_only_passes_and_a_leftover_valid_row_fails():
    """generative-recommenders' protocol (``holdout="test"``): no validation rows, train keeps
    the second-to-last event; a split made with a validation item fails that suite, naming the
    size and the users."""
    loo = leave_one_out(SEQUENCES, holdout="test")
    frames = {"sequences": SEQUENCES, "loo_train": loo.train, "loo_valid": loo.valid,
              "loo_test": loo.test}  # fmt: skip
    report = validate_loo_splits(frames, "tiny", min_items=3, holdout="test")
    assert report["success"] is True and report["holdout"] == "test"
    assert loo.valid.height == 0 and loo.train.height == SEQUENCES.height - 2
    with pytest.raises(DataValidationError) as err:
        validate_loo_splits(artifacts(), "tiny", min_items=3, holdout="test")
    broken = {
        name: {e["check"] for e in a["expectations"] if not e["success"]}
        for name, a in err.value.report["artifacts"].items()
        if not a["success"]
    }
    assert broken == {"loo_train": {"loo_train_size"},
                      "loo_valid": {"no_valid_rows", "loo_valid_size"}}  # fmt: skip
    # the test event is checked against the last train event when there is no valid one
    late = loo.test.with_columns(pl.when(pl.col("UserId") == 4).then(0).otherwise(pl.col("Time"))
                                 .alias("Time"))  # fmt: skip
    with pytest.raises(DataValidationError, match="test_not_before_valid"):
        validate_loo_splits(frames | {"loo_test": late}, "tiny", min_items=3, holdout="test")
