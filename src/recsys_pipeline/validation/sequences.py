"""Great Expectations suite for user sequences and their leave-one-out split (no Kedro).

:func:`validate_loo_splits` checks ``sequences`` (the ingested sequence frame) and ``loo_train``,
``loo_valid``, ``loo_test`` (:func:`recsys_pipeline.preprocessing.sequences.leave_one_out`). As
for the session splits (:mod:`.suites`), rows are first reduced in polars to summary tables and
GX runs on those:

- column summary per artifact (:func:`.summaries.column_summary`);
- per-user summary (one row per user of any artifact): ``UserId``, ``n_events`` (in
  ``sequences``), ``n_train``, ``n_valid``, ``n_test``, ``evaluated`` (1 when ``n_events >=
  min_items``, else 0), ``n_unassigned`` (``n_events - n_train - n_valid - n_test``),
  ``n_misplaced`` (positions where train, then valid, then test, concatenated in row order, differ
  from the user's sequence in item or time, or where one of them has no event),
  ``time_sorted`` (the user's ``Time`` never decreases in ``sequences`` row order),
  ``valid_after_train`` and ``test_after_valid`` (time differences; null when not evaluated);
- per-artifact sizes: ``artifact``, ``n_rows``, ``expected_rows`` (``sequences``: the events;
  ``loo_valid``/``loo_test``: the evaluated users; ``loo_train``: the events minus twice that),
  ``difference``.

With an item catalogue (``items``: ``ItemId``, every item the models may rank), each artifact also
gets a per-item table (``ItemId``, ``in_catalogue``): every item of every artifact must be in it.

On failure a :class:`DataValidationError` names the dataset, the artifact, the check and GX
expectation, the offending users (or artifacts) and up to 5 example rows.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import polars as pl

from .gx_runner import Check, GxRunner
from .suites import (
    _between,
    _column_specs,
    _Failure,
    _in_set,
    _message,
    _run_tables,
    _Spec,
    _Table,
    conclude,
)
from .summaries import column_summary

logger = logging.getLogger(__name__)

USER, ITEM, TIME = "UserId", "ItemId", "Time"
SPLITS = ("loo_train", "loo_valid", "loo_test")
ARTIFACTS = ("sequences", *SPLITS)
KINDS = {USER: ("int",), ITEM: ("int",), TIME: ("int",)}
LABELS = {
    "columns": "per-column summary",
    "users": "per-user summary",
    "sizes": "per-artifact sizes",
    "catalogue": "per-item catalogue membership",
}


def user_summary(artifacts: dict[str, pl.DataFrame], min_items: int) -> pl.DataFrame:
    """The per-user summary (see the module docstring), sorted by ``UserId``."""
    sequences = artifacts["sequences"]
    seq = sequences.select(
        USER,
        pl.col(ITEM).alias("seq_item"),
        pl.col(TIME).alias("seq_time"),
        pl.int_range(pl.len()).over(USER).alias("pos"),
    )
    parts = [
        artifacts[name].select(USER, ITEM, TIME).with_columns(pl.lit(k).alias("part"))
        for k, name in enumerate(SPLITS)
    ]
    split = (
        pl.concat(parts)
        .with_row_index("row")
        .sort(USER, "part", "row")
        .with_columns(pl.int_range(pl.len()).over(USER).alias("pos"))
    )
    joined = seq.join(split, on=[USER, "pos"], how="full", coalesce=True)
    misplaced = joined.group_by(USER).agg(
        (pl.col(ITEM).ne_missing(pl.col("seq_item")) | pl.col(TIME).ne_missing(pl.col("seq_time")))
        .sum()
        .alias("n_misplaced")
    )
    per_user = [
        sequences.group_by(USER).agg(
            pl.len().alias("n_events"),
            (pl.col(TIME).diff().fill_null(0) >= 0).all().alias("time_sorted"),
        ),
        artifacts["loo_train"]
        .group_by(USER)
        .agg(pl.len().alias("n_train"), pl.col(TIME).max().alias("last_train_time")),
        artifacts["loo_valid"]
        .group_by(USER)
        .agg(pl.len().alias("n_valid"), pl.col(TIME).max().alias("valid_time")),
        artifacts["loo_test"]
        .group_by(USER)
        .agg(pl.len().alias("n_test"), pl.col(TIME).min().alias("test_time")),
        misplaced,
    ]
    table = pl.concat([p.select(USER) for p in per_user]).unique()
    for part in per_user:
        table = table.join(part, on=USER, how="left")
    counts = ["n_events", "n_train", "n_valid", "n_test", "n_misplaced"]
    return (
        table.with_columns(pl.col(counts).fill_null(0), pl.col("time_sorted").fill_null(True))
        .with_columns(
            (pl.col("n_events") >= min_items).cast(pl.Int64).alias("evaluated"),
            (pl.col("n_events") - pl.col("n_train") - pl.col("n_valid") - pl.col("n_test")).alias(
                "n_unassigned"
            ),
            (pl.col("valid_time") - pl.col("last_train_time")).alias("valid_after_train"),
            # without a valid item (holdout "test"): against the last train event
            (pl.col("test_time") - pl.coalesce("valid_time", "last_train_time")).alias(
                "test_after_valid"
            ),
        )
        .sort(USER)
    )


def size_summary(
    artifacts: dict[str, pl.DataFrame], n_evaluated: int, holdout: str = "valid_test"
) -> pl.DataFrame:
    """One row per artifact: ``artifact``, ``n_rows``, ``expected_rows``, ``difference``."""
    n_events = artifacts["sequences"].height
    held = 2 if holdout == "valid_test" else 1
    expected = {
        "sequences": n_events,
        "loo_train": n_events - held * n_evaluated,
        "loo_valid": n_evaluated if held == 2 else 0,
        "loo_test": n_evaluated,
    }
    rows = [
        {
            "artifact": name,
            "n_rows": artifacts[name].height,
            "expected_rows": expected[name],
            "difference": artifacts[name].height - expected[name],
        }
        for name in ARTIFACTS
    ]
    return pl.DataFrame(
        rows,
        schema={
            "artifact": pl.String,
            "n_rows": pl.Int64,
            "expected_rows": pl.Int64,
            "difference": pl.Int64,
        },
    )


def catalogue_summary(frame: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """One row per distinct item of ``frame``: ``ItemId``, ``in_catalogue`` (1 if ``items``
    holds it, else 0)."""
    return (
        frame.select(ITEM)
        .unique()
        .sort(ITEM)
        .with_columns(pl.col(ITEM).is_in(items.get_column(ITEM).implode()).cast(pl.Int64)
                      .alias("in_catalogue"))
    )  # fmt: skip


def _only(spec: _Spec, column: str, value: Any) -> _Spec:
    """``spec`` restricted to the rows where ``column == value``."""
    c = spec.check
    return _Spec(
        Check(c.name, c.expectation, c.kwargs, column, value, c.description), spec.examples
    )


def _user_specs(artifact: str, min_items: int, holdout: str = "valid_test") -> list[_Spec]:
    """Checks on the per-user summary for one artifact."""
    if artifact == "sequences":
        return [
            _in_set(
                "time_non_decreasing",
                "time_sorted",
                [True],
                "within every user, Time never decreases in row order (chronological)",
            )
        ]
    if artifact == "loo_train":
        return [
            _in_set(
                "every_event_once",
                "n_unassigned",
                [0],
                "train + valid + test hold exactly the user's events",
            ),
            _in_set(
                "order_kept",
                "n_misplaced",
                [0],
                "train, then valid, then test (row order) is the user's sequence",
            ),
        ]
    name = artifact.removeprefix("loo_")
    column = f"n_{name}"
    if name == "valid" and holdout == "test":
        return [_in_set("no_valid_rows", column, [0], "no valid rows (holdout: test only)")]
    after = (
        _between(
            "valid_not_before_train",
            "valid_after_train",
            "the valid event is not older than any train event of the user",
            min_value=0,
        )
        if name == "valid"
        else _between(
            "test_not_before_valid",
            "test_after_valid",
            "the test event is not older than the user's valid event"
            if holdout == "valid_test"
            else "the test event is not older than any train event of the user",
            min_value=0,
        )
    )
    return [
        _only(
            _in_set(
                f"one_{name}_row_per_evaluated_user",
                column,
                [1],
                f"exactly one {name} row per user with >= {min_items} events",
            ),
            "evaluated",
            1,
        ),
        _only(
            _in_set(
                f"no_{name}_row_for_short_users",
                column,
                [0],
                f"no {name} row for users with < {min_items} events (wholly in train)",
            ),
            "evaluated",
            0,
        ),
        after,
    ]


def _size_specs(artifact: str, holdout: str = "valid_test") -> list[_Spec]:
    """The size check of one artifact on the per-artifact sizes."""
    both = holdout == "valid_test"
    what = {
        "sequences": "one row per event",
        "loo_train": f"the events minus {'two' if both else 'one'} per evaluated user",
        "loo_valid": "one row per evaluated user" if both else "no rows (holdout: test)",
        "loo_test": "one row per evaluated user",
    }[artifact]
    spec = _in_set(f"{artifact}_size", "difference", [0], f"{artifact} holds {what}")
    return [_only(_Spec(spec.check, "head"), "artifact", artifact)]


def validate_loo_splits(
    artifacts: dict[str, pl.DataFrame],
    dataset: str,
    *,
    min_items: int,
    holdout: str = "valid_test",
    items: pl.DataFrame | None = None,
    raise_on_failure: bool = True,
) -> dict[str, Any]:
    """Validate user sequences and their leave-one-out split with Great Expectations.

    Expectations:

    - every artifact: columns exactly ``UserId``, ``ItemId``, ``Time``, integer, no nulls;
    - ``sequences``: within each user ``Time`` never decreases (row order is chronological);
    - ``loo_train``: per user, train + valid + test hold exactly the user's events, and train,
      valid, test concatenated (each in row order) give the user's sequence (order kept);
    - ``loo_valid`` / ``loo_test``: exactly one row per user with ``>= min_items`` events, none for
      the others; valid not older than the user's train events, test not older than valid;
    - sizes: ``|loo_valid| = |loo_test|`` = the evaluated users, ``|loo_train|`` = the events
      minus twice that, ``|sequences|`` = the events (so train + valid + test = all events);
    - with ``holdout="test"`` (no validation item): ``loo_valid`` empty, test not older than the
      user's train events, ``|loo_train|`` = the events minus the evaluated users;
    - with ``items`` (the item catalogue, artifact ``items``): one integer ``ItemId`` column, no
      nulls, and every item of every other artifact in it.

    Args:
        artifacts: every name of :data:`ARTIFACTS` -> polars frame.
        dataset: dataset name, for the report and messages.
        min_items: the leave-one-out threshold.
        holdout: ``"valid_test"`` or ``"test"``
            (:func:`recsys_pipeline.preprocessing.sequences.leave_one_out`).
        items: the item catalogue (``ItemId``), or None (no catalogue checks).
        raise_on_failure: raise on a failed expectation; else log a warning and return the report.

    Returns:
        A JSON-ready report: ``dataset``, ``success``, ``min_items``, ``evaluated_users``,
        ``artifacts`` (name -> ``n_rows``, ``success``, ``expectations``) and ``seconds``.

    Raises:
        ValueError: an artifact is missing.
        DataValidationError: an expectation failed and ``raise_on_failure`` is True.
    """
    started = time.perf_counter()
    missing = [name for name in ARTIFACTS if name not in artifacts]
    if missing:
        raise ValueError(f"missing artifact(s) {missing}; expected {list(ARTIFACTS)}")
    kinds_ok = all(
        all(c in df.columns and df.schema[c].is_integer() for c in KINDS)
        for df in (artifacts[name] for name in ARTIFACTS)
    )
    users = user_summary(artifacts, min_items) if kinds_ok else None
    n_evaluated = int(users.get_column("evaluated").sum()) if users is not None else None
    sizes = size_summary(artifacts, n_evaluated, holdout) if n_evaluated is not None else None
    required = {column: "int" for column in KINDS}
    runner = GxRunner()
    report_artifacts: dict[str, Any] = {}
    failures: list[_Failure] = []
    for name in ARTIFACTS:
        df = artifacts[name]
        specs = _column_specs(KINDS, exact=True, required_kinds=required)
        tables = [_Table("columns", column_summary(df), "column", specs)]
        if users is not None:
            tables.append(_Table("users", users, USER, _user_specs(name, min_items, holdout)))
        if sizes is not None:
            tables.append(_Table("sizes", sizes, "artifact", _size_specs(name, holdout)))
        if items is not None and ITEM in df.columns and df.schema[ITEM].is_integer():
            spec = _in_set(
                f"{name}_in_catalogue", "in_catalogue", [1],
                f"every item of {name} is in the item catalogue",
            )  # fmt: skip
            tables.append(_Table("catalogue", catalogue_summary(df, items), ITEM, [spec]))
        entries, found = _run_tables(runner, df, name, tables)
        failures.extend(found)
        report_artifacts[name] = {
            "n_rows": df.height,
            "success": not found,
            "expectations": entries,
        }
    if items is not None:
        specs = _column_specs({ITEM: ("int",)}, exact=True, required_kinds={ITEM: "int"})
        tables = [_Table("columns", column_summary(items), "column", specs)]
        entries, found = _run_tables(runner, items, "items", tables)
        failures.extend(found)
        report_artifacts["items"] = {"n_rows": items.height, "success": not found,
                                     "expectations": entries}  # fmt: skip
    report = {
        "dataset": dataset,
        "success": not failures,
        "min_items": min_items,
        "holdout": holdout,
        "evaluated_users": n_evaluated,
        "artifacts": report_artifacts,
        "seconds": round(time.perf_counter() - started, 4),
    }
    return conclude(
        report,
        report_artifacts,
        failures,
        "leave-one-out splits",
        lambda: _message(dataset, failures, LABELS, artifact_word="artifact"),
        raise_on_failure,
    )
