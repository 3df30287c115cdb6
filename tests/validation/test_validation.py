"""Tests of the Great Expectations suites in ``recsys_pipeline.validation``.

A hand-made dataset (cut_test=100, cut_valid=50) passes; then every expectation is broken once, in
one split, and the error must name the check, the dataset, the split and the offending SessionId.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from recsys_pipeline.validation import DataValidationError, validate_raw_events, validate_splits

DATASET = "toyset"
CUT_TEST, CUT_VALID = 100, 50
SCHEMA = {"SessionId": pl.Int64, "ItemId": pl.Int64, "Time": pl.Int64}

# SessionId: (times, items). 103 crosses cut_valid, 303 crosses cut_test (only one event before).
SESSIONS = {
    101: ([10, 11, 12], [1, 2, 3]),
    102: ([20, 21], [2, 3]),
    103: ([40, 45, 55], [1, 2, 3]),
    201: ([60, 61, 62], [1, 2, 3]),
    202: ([70, 71], [3, 1]),
    301: ([100, 101, 102], [1, 2, 3]),
    302: ([110, 111], [2, 1]),
    303: ([95, 105], [1, 2]),
}


def frame(
    sessions: dict[int, tuple[list, list]], time_dtype: pl.DataType = pl.Int64
) -> pl.DataFrame:
    """Session frame in protocol order from {SessionId: (times, items)}."""
    rows = [
        (sid, item, t)
        for sid, (times, items) in sessions.items()
        for t, item in zip(times, items, strict=True)
    ]
    df = pl.DataFrame(rows, schema={**SCHEMA, "Time": time_dtype}, orient="row")
    return df.sort("SessionId", "Time", "ItemId", maintain_order=True)


def time_split(data: pl.DataFrame, starts: pl.DataFrame, cut: int) -> tuple[pl.DataFrame, ...]:
    """The protocol's rule: (train = rows before cut, sessions >= 2; test = sessions from cut)."""
    late = starts.filter(pl.col("start") >= cut).select("SessionId")
    test = data.join(late, on="SessionId", how="semi", maintain_order="left")
    train = data.filter(pl.col("Time") < cut)
    return train.filter(pl.len().over("SessionId") >= 2), test


def make_splits(time_dtype: pl.DataType = pl.Int64) -> dict[str, pl.DataFrame]:
    """The five valid splits of :data:`SESSIONS`."""
    full = frame(SESSIONS, time_dtype)
    starts = full.group_by("SessionId").agg(pl.col("Time").min().alias("start"))
    train_full, test = time_split(full, starts, CUT_TEST)
    train_tr, train_valid = time_split(train_full, starts, CUT_VALID)
    return {
        "full": full,
        "train_full": train_full,
        "test": test,
        "train_tr": train_tr,
        "train_valid": train_valid,
    }


def add_rows(df: pl.DataFrame, rows: list[tuple[int, int | None, int]]) -> pl.DataFrame:
    """``df`` plus (SessionId, ItemId, Time) rows, back in protocol order."""
    extra = pl.DataFrame(rows, schema=df.schema, orient="row")
    return pl.concat([df, extra]).sort("SessionId", "Time", "ItemId", maintain_order=True)


def failure_block(message: str, check: str) -> str:
    """The lines of ``message`` about ``check`` (from its ``* ...`` line to the next one)."""
    lines = message.splitlines()
    start = next(i for i, line in enumerate(lines) if f" {check} FAILED" in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("* ")), len(lines))
    return "\n".join(lines[start:end])


def assert_fails(
    splits: dict[str, pl.DataFrame], check: str, split: str, session_id: int, **kwargs
) -> DataValidationError:
    """validate_splits raises, naming ``check``, the dataset, ``split`` and ``session_id``."""
    params = {"cut_test": CUT_TEST, "cut_valid": CUT_VALID, **kwargs}
    with pytest.raises(DataValidationError) as info:
        validate_splits(splits, DATASET, **params)
    error = info.value
    block = failure_block(str(error), check)
    assert f"dataset {DATASET!r}" in block
    assert f"split/artifact {split!r}" in block
    assert str(session_id) in block.split("example rows", 1)[1]
    assert error.report["success"] is False
    entry = next(e for e in error.report["splits"][split]["expectations"] if e["check"] == check)
    assert entry["success"] is False
    json.dumps(error.report)
    return error


def test_valid_splits_pass_and_report_is_json():
    splits = make_splits()
    assert splits["train_full"]["SessionId"].unique().sort().to_list() == [101, 102, 103, 201, 202]
    assert splits["test"]["SessionId"].unique().sort().to_list() == [301, 302]
    assert splits["train_tr"]["SessionId"].unique().sort().to_list() == [101, 102, 103]
    assert splits["train_valid"]["SessionId"].unique().sort().to_list() == [201, 202]

    report = validate_splits(splits, DATASET, cut_test=CUT_TEST, cut_valid=CUT_VALID)

    assert report["success"] is True
    assert report["dataset"] == DATASET
    assert set(report["splits"]) == set(splits)
    assert report["splits"]["full"]["n_rows"] == splits["full"].height
    assert report["splits"]["full"]["n_items"] == 3
    checks = {e["check"] for e in report["splits"]["train_full"]["expectations"]}
    assert {
        "columns_exact",
        "ItemId_not_null",
        "min_session_length",
        "sorted_by_session_time",
        "sessions_contiguous",
        "train_full_before_cut_test",
        "disjoint_from_test",
    } <= checks
    test_checks = {e["check"] for e in report["splits"]["test"]["expectations"]}
    assert "test_sessions_start_at_or_after_cut_test" in test_checks
    assert "min_session_length" not in test_checks  # test is not length-filtered
    entry = report["splits"]["full"]["expectations"][0]
    assert set(entry) >= {"expectation", "kwargs", "success", "observed"}
    assert entry["expectation"].startswith("expect_")
    assert json.loads(json.dumps(report)) == report


def test_float_time_and_missing_cuts_are_accepted():
    splits = make_splits(pl.Float64)
    # A test session starting before the cut is fine when the cuts are unknown (RSC15 protocol).
    splits["test"] = add_rows(splits["test"], [(304, 1, 99.0), (304, 2, 100.0)])
    report = validate_splits(splits, "rsc15", cut_test=None, cut_valid=None)
    assert report["success"] is True
    checks = {e["check"] for split in report["splits"].values() for e in split["expectations"]}
    assert "disjoint_from_test" in checks
    assert not any("cut" in check for check in checks)


def test_null_item_id():
    splits = make_splits()
    test = splits["test"].with_columns(
        pl.when(pl.col("Time") == 110).then(None).otherwise(pl.col("ItemId")).alias("ItemId")
    )
    assert_fails({"test": test}, "ItemId_not_null", "test", 302)


def test_string_item_id():
    splits = make_splits()
    train_tr = splits["train_tr"].with_columns(pl.col("ItemId").cast(pl.String))
    error = assert_fails({"train_tr": train_tr}, "ItemId_kind", "train_tr", 101)
    assert "'str'" in failure_block(str(error), "ItemId_kind")


def test_missing_column():
    splits = make_splits()
    train_full = splits["train_full"].drop("Time")
    error = assert_fails({"train_full": train_full}, "columns_exact", "train_full", 101)
    assert "offending column: ['Time']" in str(error)
    assert error.report["splits"]["train_full"]["skipped"][0]["table"] == "sessions"


def test_length_one_session_in_train_full():
    splits = make_splits()
    train_full = add_rows(splits["train_full"], [(150, 1, 30)])
    error = assert_fails({"train_full": train_full}, "min_session_length", "train_full", 150)
    assert "offending SessionId: [150]" in str(error)


def test_item_support_below_minimum_in_full():
    splits = make_splits()
    rows = [(sid, item, t) for sid in (160, 161, 162, 163) for item, t in ((77, 30), (1, 31))]
    full = add_rows(splits["full"], rows)
    assert full.filter(pl.col("ItemId") == 77).height == 4
    error = assert_fails({"full": full}, "min_item_support", "full", 160)
    assert "offending ItemId: [77]" in str(error)


def test_unsorted_rows():
    splits = make_splits()
    train_full = splits["train_full"].with_columns(
        pl.when(pl.col("Time") == 40)
        .then(46)
        .when(pl.col("Time") == 45)
        .then(40)
        .otherwise(pl.col("Time"))
        .alias("Time")
    )
    assert_fails({"train_full": train_full}, "sorted_by_session_time", "train_full", 103)


def test_non_contiguous_session():
    splits = make_splits()
    train_full = splits["train_full"]
    moved = train_full.filter(pl.col("Time") == 12)
    train_full = pl.concat([train_full.filter(pl.col("Time") != 12), moved])
    assert_fails({"train_full": train_full}, "sessions_contiguous", "train_full", 101)


def test_test_session_starting_before_cut():
    splits = make_splits()
    test = add_rows(splits["test"], [(304, 1, 99), (304, 2, 100)])
    error = assert_fails({"test": test}, "test_sessions_start_at_or_after_cut_test", "test", 304)
    assert "offending SessionId: [304]" in str(error)


def test_train_full_event_at_cut():
    splits = make_splits()
    train_full = add_rows(splits["train_full"], [(201, 1, CUT_TEST)])
    assert_fails({"train_full": train_full}, "train_full_before_cut_test", "train_full", 201)


def test_session_in_train_full_and_test():
    splits = make_splits()
    train_full = add_rows(splits["train_full"], [(301, 1, 90), (301, 2, 91)])
    overlap = {"train_full": train_full, "test": splits["test"]}
    assert_fails(overlap, "disjoint_from_test", "train_full", 301)
    # The disjointness check stays when the cuts are unknown (RSC15 protocol).
    assert_fails(overlap, "disjoint_from_test", "train_full", 301, cut_test=None, cut_valid=None)


def test_session_in_train_tr_and_train_valid():
    splits = make_splits()
    train_tr = add_rows(splits["train_tr"], [(201, 1, 46), (201, 2, 47)])
    assert_fails(
        {"train_tr": train_tr, "train_valid": splits["train_valid"]},
        "disjoint_from_train_valid",
        "train_tr",
        201,
    )


def test_no_raise_returns_failed_report():
    splits = make_splits()
    train_full = add_rows(splits["train_full"], [(150, 1, 30)])
    report = validate_splits(
        {"train_full": train_full},
        DATASET,
        cut_test=CUT_TEST,
        cut_valid=CUT_VALID,
        raise_on_failure=False,
    )
    assert report["success"] is False
    failed = [e for e in report["splits"]["train_full"]["expectations"] if not e["success"]]
    assert [e["check"] for e in failed] == ["min_session_length"]
    assert failed[0]["offending"] == {"SessionId": [150]}
    json.dumps(report)


def test_unknown_split_name():
    with pytest.raises(ValueError, match="unknown split"):
        validate_splits({"training": make_splits()["full"]}, DATASET, cut_test=1, cut_valid=0)


RAW_REQUIRED = {"user_id": "int", "product_id": "int", "event_time": "time", "event_type": "str"}


def raw_events() -> pl.DataFrame:
    """A raw event frame with one extra column."""
    return pl.DataFrame(
        {
            "user_id": [7, 7, 8],
            "product_id": [100, 101, 100],
            "event_time": ["2019-10-01 00:00:00 UTC", "2019-10-01 00:01:00 UTC", "2019-10-02"],
            "event_type": ["view", "cart", "view"],
            "price": [1.5, None, 2.0],
        }
    )


def test_raw_events_pass():
    report = validate_raw_events(raw_events(), "rees46", RAW_REQUIRED)
    assert report["success"] is True
    assert report["n_rows"] == 3
    json.dumps(report)


def test_raw_missing_column():
    with pytest.raises(DataValidationError) as info:
        validate_raw_events(raw_events().drop("product_id"), "rees46", RAW_REQUIRED)
    message = str(info.value)
    assert "required_columns_present" in message
    assert "'rees46'" in message and "'raw'" in message
    assert "offending column: ['product_id']" in message


def test_raw_null_values():
    events = raw_events().with_columns(
        pl.when(pl.col("product_id") == 101)
        .then(None)
        .otherwise(pl.col("user_id"))
        .alias("user_id")
    )
    with pytest.raises(DataValidationError) as info:
        validate_raw_events(events, "rees46", RAW_REQUIRED)
    block = failure_block(str(info.value), "user_id_not_null")
    assert "offending column: ['user_id']" in block
    assert "101" in block  # the example row with the null user_id


def test_raw_wrong_kind_and_unknown_kind():
    events = raw_events().with_columns(pl.col("user_id").cast(pl.String))
    with pytest.raises(DataValidationError, match="user_id_kind"):
        validate_raw_events(events, "rees46", RAW_REQUIRED)
    with pytest.raises(ValueError, match="unknown column kind"):
        validate_raw_events(raw_events(), "rees46", {"user_id": "integer"})
