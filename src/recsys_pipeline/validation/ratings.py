"""Great Expectations suite for the rating-data protocols (NCF leave-last-out, global time split).

Plain function on polars frames (no Kedro): :func:`validate_rating_splits`. As for the session
splits (:mod:`.suites`), rows are first reduced in polars to summary tables and GX runs on those:

- column summary per artifact (see :func:`.summaries.column_summary`);
- per-user summary of the NCF split (one row per user of any NCF artifact): ``UserId``,
  ``n_ratings``, ``n_train``, ``n_valid``, ``n_test``, ``last_train_time``, ``valid_time``,
  ``test_time``, ``valid_after_train`` (seconds; >= 0 when valid is not before any train row),
  ``test_after_valid``, and per negatives artifact ``<name>_count``, ``<name>_distinct``,
  ``<name>_rated`` (negatives the user rated), ``<name>_unknown`` (negatives outside the items);
- per-split summary of the time split: ``split``, ``n_rows``, ``min_time``, ``max_time``.

On failure a :class:`DataValidationError` names the dataset, the artifact, the check and GX
expectation, the offending keys (UserId, split or column) and up to 5 example rows.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import polars as pl

from .gx_runner import Check, GxRunner, to_builtin
from .suites import (
    N_EXAMPLES,
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
NCF_SPLITS = ("ncf_train", "ncf_valid", "ncf_test")
NEGATIVES = ("ncf_valid_negatives", "ncf_test_negatives")
TIME_SPLITS = ("time_train", "time_valid", "time_test")
ARTIFACTS = NCF_SPLITS + NEGATIVES + TIME_SPLITS
PROTOCOLS = ("ncf", "time")
_PROTOCOL_ARTIFACTS = {"ncf": NCF_SPLITS + NEGATIVES, "time": TIME_SPLITS}
SPLIT_KINDS = {USER: ("int",), ITEM: ("int",), TIME: ("int",)}
NEGATIVE_KINDS = {USER: ("int",), ITEM: ("int",)}
LABELS = {
    "columns": "per-column summary",
    "users": "per-user summary",
    "splits": "per-split summary",
}


def user_summary(artifacts: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The per-user summary of the NCF artifacts (see the module docstring), sorted by UserId."""
    train, valid, test = (artifacts[name] for name in NCF_SPLITS)
    positives = pl.concat([df.select(USER, ITEM) for df in (train, valid, test)])
    items = positives.select(ITEM).unique()
    parts = [
        train.group_by(USER).agg(
            pl.len().alias("n_train"), pl.col(TIME).max().alias("last_train_time")
        ),
        valid.group_by(USER).agg(pl.len().alias("n_valid"), pl.col(TIME).max().alias("valid_time")),
        test.group_by(USER).agg(pl.len().alias("n_test"), pl.col(TIME).min().alias("test_time")),
    ]
    for name in NEGATIVES:
        negatives = artifacts[name].select(USER, ITEM)
        rated = negatives.join(positives, on=[USER, ITEM], how="semi")
        unknown = negatives.join(items, on=ITEM, how="anti")
        parts.append(
            negatives.group_by(USER).agg(
                pl.len().alias(f"{name}_count"), pl.col(ITEM).n_unique().alias(f"{name}_distinct")
            )
        )
        parts.append(rated.group_by(USER).agg(pl.len().alias(f"{name}_rated")))
        parts.append(unknown.group_by(USER).agg(pl.len().alias(f"{name}_unknown")))
    users = pl.concat([p.select(USER) for p in parts]).unique()
    table = users
    for part in parts:
        table = table.join(part, on=USER, how="left")
    counts = [
        c
        for c in table.columns
        if c.startswith("n_") or c.endswith(("_count", "_distinct", "_rated", "_unknown"))
    ]
    return (
        table.with_columns(pl.col(counts).fill_null(0))
        .with_columns(
            (pl.col("n_train") + pl.col("n_valid") + pl.col("n_test")).alias("n_ratings"),
            (pl.col("valid_time") - pl.col("last_train_time")).alias("valid_after_train"),
            (pl.col("test_time") - pl.col("valid_time")).alias("test_after_valid"),
        )
        .sort(USER)
    )


def split_summary(artifacts: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per time split: ``split``, ``n_rows``, ``min_time``, ``max_time``."""
    return pl.DataFrame(
        [
            {
                "split": name,
                "n_rows": artifacts[name].height,
                "min_time": artifacts[name].get_column(TIME).min(),
                "max_time": artifacts[name].get_column(TIME).max(),
            }
            for name in TIME_SPLITS
        ],
        schema={"split": pl.String, "n_rows": pl.Int64, "min_time": pl.Int64, "max_time": pl.Int64},
    )


def _where(spec: _Spec, column: str, value: Any) -> _Spec:
    """``spec`` restricted to the rows where ``column == value``."""
    check = spec.check
    return _Spec(
        Check(check.name, check.expectation, check.kwargs, column, value, check.description),
        "head",
    )


def _user_specs(artifact: str, min_user_ratings: int, n_negatives: int) -> list[_Spec]:
    """Checks on the per-user summary for one NCF artifact."""
    if artifact == "ncf_train":
        return [
            _between(
                "min_user_ratings",
                "n_ratings",
                f"every user has >= {min_user_ratings} ratings (train + valid + test)",
                min_value=min_user_ratings,
            ),
            _between("train_not_empty", "n_train", "every user has train rows", min_value=1),
        ]
    if artifact == "ncf_valid":
        return [
            _in_set("one_valid_row", "n_valid", [1], "exactly one valid row per user"),
            _between(
                "valid_not_before_train",
                "valid_after_train",
                "the valid row is not older than any train row of the user",
                min_value=0,
            ),
        ]
    if artifact == "ncf_test":
        return [
            _in_set("one_test_row", "n_test", [1], "exactly one test row per user"),
            _between(
                "test_not_before_valid",
                "test_after_valid",
                "the test row is not older than the user's valid row",
                min_value=0,
            ),
        ]
    return [
        _in_set(
            f"{n_negatives}_negatives",
            f"{artifact}_count",
            [n_negatives],
            f"exactly {n_negatives} negatives per user",
        ),
        _in_set(
            "negatives_distinct",
            f"{artifact}_distinct",
            [n_negatives],
            "no negative twice for a user",
        ),
        _in_set("negatives_never_rated", f"{artifact}_rated", [0], "no negative rated by the user"),
        _in_set(
            "negatives_known_items",
            f"{artifact}_unknown",
            [0],
            "every negative is an item of the filtered data",
        ),
    ]


def _split_specs(artifact: str, cut_valid: int, cut_test: int) -> list[_Spec]:
    """Checks on the per-split summary for one time split."""
    specs = []
    if artifact == "time_train":
        specs.append(
            _between(
                "train_before_cut_valid",
                "max_time",
                f"every time_train rating is before cut_valid={cut_valid}",
                max_value=cut_valid,
                strict_max=True,
            )
        )
    if artifact in ("time_valid", "time_test"):
        cut = cut_valid if artifact == "time_valid" else cut_test
        name = "cut_valid" if artifact == "time_valid" else "cut_test"
        specs.append(
            _between(
                f"{artifact}_at_or_after_{name}",
                "min_time",
                f"every {artifact} rating is at or after {name}={cut}",
                min_value=cut,
            )
        )
    if artifact == "time_valid":
        specs.append(
            _between(
                "valid_before_cut_test",
                "max_time",
                f"every time_valid rating is before cut_test={cut_test}",
                max_value=cut_test,
                strict_max=True,
            )
        )
    return [_where(spec, "split", artifact) for spec in specs]


def validate_rating_splits(
    artifacts: dict[str, pl.DataFrame],
    dataset: str,
    *,
    min_user_ratings: int | None = None,
    n_negatives: int | None = None,
    cut_valid: int,
    cut_test: int,
    raise_on_failure: bool = True,
    protocols: tuple[str, ...] = PROTOCOLS,
) -> dict[str, Any]:
    """Validate the NCF split, its negatives and the global time split with Great Expectations.

    Expectations:

    - every artifact: columns exactly ``UserId``, ``ItemId``, ``Time`` (negatives: ``UserId``,
      ``ItemId``), all integer, no nulls;
    - ``ncf_train``: every user has ``>= min_user_ratings`` ratings over the three NCF splits and
      at least one train row; ``ncf_valid``: exactly one row per user, not older than any of the
      user's train rows; ``ncf_test``: exactly one row per user, not older than the valid row;
    - ``ncf_valid_negatives`` / ``ncf_test_negatives``: exactly ``n_negatives`` distinct items per
      user, none rated by the user, all items of the NCF data;
    - ``time_train`` before ``cut_valid``; ``time_valid`` in ``[cut_valid, cut_test)``;
      ``time_test`` at or after ``cut_test``.

    Args:
        artifacts: every name of :data:`ARTIFACTS` -> polars frame.
        dataset: dataset name, for the report and messages.
        min_user_ratings: the NCF user filter.
        n_negatives: negatives per user.
        cut_valid: the time split's valid cut (epoch seconds).
        cut_test: the time split's test cut.
        raise_on_failure: raise on a failed expectation; else log a warning and return the report.
        protocols: which of ``("ncf", "time")`` to check; ``("time",)`` needs only the three
            time splits (e.g. new ratings cut into training data and a window by ``retrain``).

    Returns:
        A JSON-ready report: ``dataset``, ``success``, the parameters, ``artifacts`` (name ->
        ``n_rows``, ``success``, ``expectations``) and ``seconds``.

    Raises:
        ValueError: an artifact is missing.
        DataValidationError: an expectation failed and ``raise_on_failure`` is True.
    """
    started = time.perf_counter()
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown or not protocols:
        raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {protocols}")
    names = tuple(n for p in PROTOCOLS if p in protocols for n in _PROTOCOL_ARTIFACTS[p])
    if "ncf" in protocols and (min_user_ratings is None or n_negatives is None):
        raise ValueError("the NCF checks need min_user_ratings and n_negatives")
    missing = [name for name in names if name not in artifacts]
    if missing:
        raise ValueError(f"missing artifact(s) {missing}; expected {list(names)}")
    kinds_ok = all(
        all(
            c in artifacts[name].columns and artifacts[name].schema[c].is_integer()
            for c in (NEGATIVE_KINDS if name in NEGATIVES else SPLIT_KINDS)
        )
        for name in names
    )
    users = user_summary(artifacts) if kinds_ok and "ncf" in protocols else None
    splits = split_summary(artifacts) if kinds_ok and "time" in protocols else None
    runner = GxRunner()
    report_artifacts: dict[str, Any] = {}
    failures: list[_Failure] = []
    for name in names:
        df = artifacts[name]
        kinds = NEGATIVE_KINDS if name in NEGATIVES else SPLIT_KINDS
        required = {column: "int" for column in kinds}
        tables = [
            _Table(
                "columns",
                column_summary(df),
                "column",
                _column_specs(kinds, exact=True, required_kinds=required),
            )
        ]
        if users is not None and name in NCF_SPLITS + NEGATIVES:
            tables.append(
                _Table("users", users, USER, _user_specs(name, min_user_ratings, n_negatives))
            )
        if splits is not None and name in TIME_SPLITS:
            tables.append(
                _Table("splits", splits, "split", _split_specs(name, cut_valid, cut_test))
            )
        entries, found = _run_tables(runner, df, name, [t for t in tables if t.specs])
        for failure in found:  # time-split failures: show the rows outside the split's window
            if failure.table == "splits":
                low = {"time_valid": cut_valid, "time_test": cut_test}.get(name)
                high = {"time_train": cut_valid, "time_valid": cut_test}.get(name)
                outside = pl.lit(False)
                if low is not None:
                    outside = outside | (pl.col(TIME) < low)
                if high is not None:
                    outside = outside | (pl.col(TIME) >= high)
                failure.examples = (
                    df.lazy().with_row_index("row").filter(outside).head(N_EXAMPLES).collect()
                )
        failures.extend(found)
        report_artifacts[name] = {
            "n_rows": df.height,
            "success": not found,
            "expectations": entries,
        }
    report = {
        "dataset": dataset,
        "success": not failures,
        "protocols": list(protocols),
        "min_user_ratings": min_user_ratings,
        "n_negatives": n_negatives,
        "cut_valid": to_builtin(cut_valid),
        "cut_test": to_builtin(cut_test),
        "artifacts": report_artifacts,
        "seconds": round(time.perf_counter() - started, 4),
    }
    return conclude(
        report,
        report_artifacts,
        failures,
        "rating splits",
        lambda: _message(dataset, failures, LABELS, artifact_word="artifact"),
        raise_on_failure,
    )
