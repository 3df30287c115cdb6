"""Great Expectations suites for raw event frames and for the five GRU4Rec protocol splits.

Two entry points, both plain functions on polars frames (no Kedro):

- :func:`validate_raw_events`: schema check of a raw event frame before preprocessing (required
  columns present, of the right kind, without nulls).
- :func:`validate_splits`: the invariants of ``full``, ``train_full``, ``test``, ``train_tr`` and
  ``train_valid`` (see ``shared/spec/preprocessing.md``): columns and types, no nulls, session
  length and item support, row order, the time cuts, and disjoint session ids.

Scale: splits can hold 100M rows and GX validates pandas frames row by row, so the rows are first
reduced in polars to summary tables (see :mod:`.summaries`: one row per column, per session, per
item) and GX runs on those. A 20M-row split (3.3M sessions) takes about 1 s on 2 busy cores,
plus about 3 s, once per process, to import GX.

On failure a :class:`DataValidationError` names, for every failed expectation, the dataset, the
split, the check and the GX expectation with its arguments, the observed values, the offending
keys (SessionId, ItemId or column) and up to 5 example rows of the original frame (with their row
number in ``row``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from .gx_runner import Check, CheckResult, GxRunner, to_builtin
from .summaries import (
    ITEM,
    SESSION,
    TIME,
    column_summary,
    flag_sessions_in,
    item_summary,
    session_summary,
)

logger = logging.getLogger(__name__)

#: The split names :func:`validate_splits` knows.
SPLITS = ("full", "train_full", "test", "train_tr", "train_valid")
#: Splits whose sessions were filtered to at least ``min_session_length`` events.
LENGTH_FILTERED = ("full", "train_full", "train_tr")
#: Allowed dtype kinds (see :func:`.summaries.dtype_kind`) of the output columns.
SPLIT_KINDS: dict[str, tuple[str, ...]] = {
    SESSION: ("int",),
    ITEM: ("int",),
    TIME: ("int", "float"),
}
#: What each kind a caller of :func:`validate_raw_events` may ask for accepts.
RAW_KINDS: dict[str, tuple[str, ...]] = {
    "int": ("int",),
    "float": ("float", "int"),
    "str": ("str",),
    "time": ("int", "float", "datetime", "str"),
}
#: How many example rows an error message shows per failed expectation.
N_EXAMPLES = 5

Examples = Literal["keys", "nulls", "head"]


class DataValidationError(ValueError):
    """A data frame broke one or more expectations.

    The message names every failed expectation with its dataset and split (or artifact) and shows
    up to 5 offending rows of the original frame. ``report`` holds the full JSON-ready report.
    """

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        """Keep ``report`` (the dict the validation function would have returned)."""
        super().__init__(message)
        self.report: dict[str, Any] = report or {}


@dataclass(frozen=True)
class _Spec:
    """A :class:`Check` plus how to pick example rows of the original frame when it fails."""

    check: Check
    examples: Examples = "keys"


@dataclass
class _Table:
    """A summary table, the name of its key column and the checks to run on it."""

    name: str
    frame: pl.DataFrame
    key: str
    specs: list[_Spec] = field(default_factory=list)


@dataclass
class _Failure:
    """A failed check, with what the error message shows about it."""

    artifact: str
    table: str
    result: CheckResult
    key: str
    offending: list[Any]
    examples: pl.DataFrame


TABLE_LABELS = {
    "columns": "per-column summary",
    "sessions": "per-session summary",
    "items": "per-item summary",
}


def _column_specs(
    kinds: Mapping[str, tuple[str, ...]], *, exact: bool, required_kinds: Mapping[str, str]
) -> list[_Spec]:
    """Checks on the column summary: the set of columns, then each column's kind and nulls."""
    columns = list(kinds)
    if exact:
        presence = Check(
            "columns_exact",
            "ExpectColumnDistinctValuesToEqualSet",
            {"column": "column", "value_set": columns},
            description=f"the columns are exactly {columns}",
        )
    else:
        presence = Check(
            "required_columns_present",
            "ExpectColumnDistinctValuesToContainSet",
            {"column": "column", "value_set": columns},
            description=f"the columns include {columns}",
        )
    specs = [_Spec(presence, "head")]
    for column, allowed in kinds.items():
        wanted = required_kinds.get(column, "/".join(allowed))
        specs.append(
            _Spec(
                Check(
                    f"{column}_kind",
                    "ExpectColumnValuesToBeInSet",
                    {"column": "kind", "value_set": list(allowed)},
                    row_condition_column="column",
                    row_condition_value=column,
                    description=f"column {column} has a dtype of kind {wanted}",
                ),
                "head",
            )
        )
        specs.append(
            _Spec(
                Check(
                    f"{column}_not_null",
                    "ExpectColumnValuesToBeInSet",
                    {"column": "null_count", "value_set": [0]},
                    row_condition_column="column",
                    row_condition_value=column,
                    description=f"column {column} has no nulls",
                ),
                "nulls",
            )
        )
    return specs


def _between(name: str, column: str, description: str, **bounds: Any) -> _Spec:
    """A per-row bound check (``ExpectColumnValuesToBeBetween``) on a summary table."""
    kwargs = {"column": column, **{k: to_builtin(v) for k, v in bounds.items()}}
    return _Spec(Check(name, "ExpectColumnValuesToBeBetween", kwargs, description=description))


def _in_set(name: str, column: str, values: list[Any], description: str) -> _Spec:
    """A per-row membership check (``ExpectColumnValuesToBeInSet``) on a summary table."""
    return _Spec(
        Check(
            name,
            "ExpectColumnValuesToBeInSet",
            {"column": column, "value_set": values},
            description=description,
        )
    )


def _session_specs(
    split: str,
    *,
    cut_test: float | None,
    cut_valid: float | None,
    min_session_length: int,
    disjoint_from: str | None,
) -> list[_Spec]:
    """Checks on the per-session summary of ``split``."""
    specs = [
        _in_set(
            "sessions_contiguous",
            "n_runs",
            [1],
            "the rows of every session are contiguous (n_runs == 1)",
        ),
        _in_set(
            "sorted_by_session_time",
            "is_sorted",
            [True],
            "rows are ordered by (SessionId, Time)",
        ),
    ]
    if split in LENGTH_FILTERED:
        specs.append(
            _between(
                "min_session_length",
                "length",
                f"every session has at least {min_session_length} events",
                min_value=min_session_length,
            )
        )
    if split == "test" and cut_test is not None:
        specs.append(
            _between(
                "test_sessions_start_at_or_after_cut_test",
                "first_time",
                f"every test session starts at or after cut_test={cut_test}",
                min_value=cut_test,
            )
        )
    if split == "train_full" and cut_test is not None:
        specs.append(
            _between(
                "train_full_before_cut_test",
                "last_time",
                f"every train_full event is before cut_test={cut_test}",
                max_value=cut_test,
                strict_max=True,
            )
        )
    if split == "train_valid" and cut_valid is not None:
        specs.append(
            _between(
                "train_valid_sessions_start_at_or_after_cut_valid",
                "first_time",
                f"every train_valid session starts at or after cut_valid={cut_valid}",
                min_value=cut_valid,
            )
        )
    if split == "train_tr" and cut_valid is not None:
        specs.append(
            _between(
                "train_tr_before_cut_valid",
                "last_time",
                f"every train_tr event is before cut_valid={cut_valid}",
                max_value=cut_valid,
                strict_max=True,
            )
        )
    if disjoint_from is not None:
        specs.append(
            _in_set(
                f"disjoint_from_{disjoint_from}",
                f"in_{disjoint_from}",
                [False],
                f"no SessionId of {split} is also in {disjoint_from}",
            )
        )
    return specs


def _offending(table: _Table, result: CheckResult) -> list[Any]:
    """Up to 5 keys (SessionId, ItemId or column) that broke ``result``'s expectation."""
    if result.unexpected_index:
        positions = result.unexpected_index[:N_EXAMPLES]
        return to_builtin(table.frame.get_column(table.key).gather(positions).to_list())
    return to_builtin((result.missing + result.unexpected_values)[:N_EXAMPLES])


def _examples(df: pl.DataFrame, table: _Table, spec: _Spec, keys: list[Any]) -> pl.DataFrame:
    """Up to 5 rows of the original frame, with their row number, that illustrate a failure."""
    rows = df.lazy().with_row_index("row")
    if spec.examples == "head" or not keys:
        return rows.head(N_EXAMPLES).collect()
    if spec.examples == "nulls":
        column = spec.check.row_condition_value
        return rows.filter(pl.col(column).is_null()).head(N_EXAMPLES).collect()
    present = [key for key in keys if key is not None]
    hit = pl.col(table.key).is_in(pl.Series(present, dtype=df.schema[table.key]))
    if len(present) < len(keys):
        hit = hit | pl.col(table.key).is_null()
    return rows.filter(hit).head(N_EXAMPLES).collect()


def _run_tables(
    runner: GxRunner, df: pl.DataFrame, artifact: str, tables: list[_Table]
) -> tuple[list[dict[str, Any]], list[_Failure]]:
    """Run every table's checks; returns the report entries and the failures."""
    entries: list[dict[str, Any]] = []
    failures: list[_Failure] = []
    for table in tables:
        specs = {spec.check.name: spec for spec in table.specs}
        frame = table.frame.to_pandas()
        results = runner.run(f"{artifact}_{table.name}", frame, [s.check for s in table.specs])
        for result in results:
            entry: dict[str, Any] = {
                "check": result.check.name,
                "table": table.name,
                "expectation": result.expectation_type,
                "kwargs": result.kwargs,
                "success": result.success,
                "observed": result.observed,
            }
            if not result.success:
                spec = specs[result.check.name]
                keys = _offending(table, result)
                entry["offending"] = {table.key: keys}
                failures.append(
                    _Failure(
                        artifact,
                        table.name,
                        result,
                        table.key,
                        keys,
                        _examples(df, table, spec, keys),
                    )
                )
            entries.append(entry)
    return entries, failures


def _format_kwargs(kwargs: Mapping[str, Any]) -> str:
    """``column='length', min_value=2 where column == 'ItemId'`` for a message."""
    text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "row_condition")
    condition = kwargs.get("row_condition")
    if isinstance(condition, Mapping) and "parameter" in condition:
        name = (condition.get("column") or {}).get("name")
        text += f" where {name} {condition.get('operator')} {condition['parameter']!r}"
    return text


def conclude(
    report: dict[str, Any],
    parts: Mapping[str, Mapping[str, Any]],
    failures: list[_Failure],
    what: str,
    message: Callable[[], str],
    raise_on_failure: bool,
) -> dict[str, Any]:
    """Log how many expectations of ``parts`` (each with an ``expectations`` list) were met,
    then raise :class:`DataValidationError` with ``message()`` (or log it as a warning) when
    anything failed; returns ``report``."""
    n_checks = sum(len(part["expectations"]) for part in parts.values())
    logger.info(
        "validated %s %s: %d/%d expectations met in %.2f s",
        report["dataset"],
        what,
        n_checks - len(failures),
        n_checks,
        report["seconds"],
    )
    if failures:
        text = message()
        if raise_on_failure:
            raise DataValidationError(text, report)
        logger.warning("%s", text)
    return report


def _message(
    dataset: str,
    failures: list[_Failure],
    labels: Mapping[str, str] | None = None,
    artifact_word: str = "split/artifact",
) -> str:
    """The error message: one block per failure, with example rows (``labels``: table name ->
    its description, default :data:`TABLE_LABELS`)."""
    labels = TABLE_LABELS if labels is None else labels
    artifacts = sorted({f.artifact for f in failures})
    lines = [
        f"Data validation failed for dataset {dataset!r} "
        f"({', '.join(artifacts)}): {len(failures)} expectation(s) failed."
    ]
    with pl.Config(
        tbl_rows=N_EXAMPLES, tbl_cols=-1, tbl_hide_dataframe_shape=True, tbl_width_chars=200
    ):
        for f in failures:
            result = f.result
            lines.append(
                f"* dataset {dataset!r}, {artifact_word} {f.artifact!r}: {result.check.name} "
                f"FAILED: {result.expectation_type}({_format_kwargs(result.kwargs)}) "
                f"on the {labels[f.table]}; expected: {result.check.description}."
            )
            lines.append(f"  observed: {result.observed}")
            lines.append(f"  offending {f.key}: {f.offending}")
            lines.append(f"  example rows of {f.artifact!r} (up to {N_EXAMPLES}):")
            lines.extend("    " + line for line in str(f.examples).splitlines())
    return "\n".join(lines)


def validate_raw_events(df: pl.DataFrame, dataset: str, required: dict[str, str]) -> dict:
    """Check a raw event frame before preprocessing: required columns, their kinds, no nulls.

    Extra columns are allowed. Nulls and kinds are checked on the required columns only.

    Args:
        df: the raw events, as read (any size: only the schema and null counts are used).
        dataset: dataset name, for the report and messages.
        required: column name -> kind, one of ``"int"``, ``"float"`` (float or integer),
            ``"str"`` (String, Categorical, Enum) or ``"time"`` (integer or float epoch, Datetime,
            Date, or a string still to be parsed).

    Returns:
        A JSON-serialisable report: ``dataset``, ``artifact`` (``"raw"``), ``success``,
        ``n_rows``, ``columns`` (name -> polars dtype), ``expectations`` (one dict per check:
        ``check``, ``table``, ``expectation``, ``kwargs``, ``success``, ``observed``, and on
        failure ``offending``) and ``seconds``.

    Raises:
        ValueError: a kind in ``required`` is unknown.
        DataValidationError: an expectation failed; the message names the column.
    """
    started = time.perf_counter()
    unknown = {kind for kind in required.values() if kind not in RAW_KINDS}
    if unknown:
        raise ValueError(f"unknown column kind(s) {sorted(unknown)}; use {sorted(RAW_KINDS)}")
    kinds = {column: RAW_KINDS[kind] for column, kind in required.items()}
    table = _Table(
        "columns",
        column_summary(df),
        "column",
        _column_specs(kinds, exact=False, required_kinds=required),
    )
    runner = GxRunner()
    entries, failures = _run_tables(runner, df, "raw", [table])
    report = {
        "dataset": dataset,
        "artifact": "raw",
        "success": not failures,
        "n_rows": df.height,
        "columns": {name: str(dtype) for name, dtype in df.schema.items()},
        "expectations": entries,
        "seconds": round(time.perf_counter() - started, 4),
    }
    logger.info(
        "validated raw events of %s: %d rows, %d/%d expectations met in %.2f s",
        dataset,
        df.height,
        len(entries) - len(failures),
        len(entries),
        report["seconds"],
    )
    if failures:
        raise DataValidationError(_message(dataset, failures), report)
    return report


def validate_splits(
    splits: dict[str, pl.DataFrame],
    dataset: str,
    *,
    cut_test: int | float | None,
    cut_valid: int | float | None,
    min_item_support: int = 5,
    min_session_length: int = 2,
    raise_on_failure: bool = True,
) -> dict:
    """Validate the protocol splits of one dataset with Great Expectations.

    Expectations (each split present in ``splits``; see ``shared/spec/preprocessing.md``):

    - columns exactly ``SessionId``, ``ItemId``, ``Time``; ``SessionId`` and ``ItemId`` integer,
      ``Time`` integer or float; no nulls;
    - rows ordered by (SessionId, Time), every session's rows contiguous;
    - ``full``, ``train_full``, ``train_tr``: every session has ``>= min_session_length`` events;
    - ``full``: every item has ``>= min_item_support`` events;
    - ``test``: every session starts at or after ``cut_test``; ``train_full``: every event is
      before ``cut_test``; ``train_valid``: every session starts at or after ``cut_valid``;
      ``train_tr``: every event is before ``cut_valid`` (each skipped when its cut is None, as for
      the older RSC15 protocol, which splits by session end time);
    - no SessionId in both ``train_full`` and ``test``, nor in both ``train_tr`` and
      ``train_valid`` (when both splits are given).

    Note that the RSC15 protocol filters ``full`` in one pass, so its item support may end up
    below 5: pass ``min_item_support=1`` there.

    Args:
        splits: split name (any of :data:`SPLITS`) -> polars frame.
        dataset: dataset name, for the report and messages.
        cut_test: the train_full/test cut, in the units of ``Time``; None skips its checks.
        cut_valid: the train_tr/train_valid cut; None skips its checks.
        min_item_support: the least number of events of an item in ``full``.
        min_session_length: the least number of events of a session in the filtered splits.
        raise_on_failure: raise :class:`DataValidationError` when an expectation fails; when
            False, log a warning and return the report.

    Returns:
        A JSON-serialisable report: ``dataset``, ``success``, the parameters, ``splits`` (split ->
        ``n_rows``, ``n_sessions``, ``n_items``, ``success``, ``expectations`` (one dict per
        check: ``check``, ``table``, ``expectation`` (GX type), ``kwargs``, ``success``,
        ``observed``, and on failure ``offending``), ``skipped`` (summary tables that could not be
        built, with the reason)) and ``seconds``.

    Raises:
        ValueError: an unknown split name.
        DataValidationError: an expectation failed and ``raise_on_failure`` is True.
    """
    started = time.perf_counter()
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected some of {list(SPLITS)}")
    ordered = [name for name in SPLITS if name in splits]
    required = {column: "/".join(kinds) for column, kinds in SPLIT_KINDS.items()}

    columns = {name: column_summary(splits[name]) for name in ordered}
    sessions: dict[str, pl.DataFrame] = {}
    skipped: dict[str, list[dict[str, str]]] = {name: [] for name in ordered}
    for name in ordered:
        kinds = dict(zip(columns[name]["column"], columns[name]["kind"], strict=True))
        if SESSION in kinds and kinds.get(TIME) in ("int", "float"):
            sessions[name] = session_summary(splits[name])
        else:
            reason = f"needs columns {SESSION} and a numeric {TIME}"
            skipped[name].append({"table": "sessions", "reason": reason})
    pairs = {"train_full": "test", "train_tr": "train_valid"}
    for name, other in pairs.items():
        if name in sessions and other in sessions:
            sessions[name] = flag_sessions_in(sessions[name], sessions[other], f"in_{other}")

    runner = GxRunner()
    report_splits: dict[str, Any] = {}
    failures: list[_Failure] = []
    for name in ordered:
        df = splits[name]
        tables = [
            _Table(
                "columns",
                columns[name],
                "column",
                _column_specs(SPLIT_KINDS, exact=True, required_kinds=required),
            )
        ]
        if name in sessions:
            table = sessions[name]
            other = pairs.get(name)
            specs = _session_specs(
                name,
                cut_test=cut_test,
                cut_valid=cut_valid,
                min_session_length=min_session_length,
                disjoint_from=other if other and f"in_{other}" in table.columns else None,
            )
            tables.append(_Table("sessions", table, SESSION, specs))
        items = None
        if name == "full":
            if ITEM in df.columns:
                items = item_summary(df)
                spec = _between(
                    "min_item_support",
                    "count",
                    f"every item of full has at least {min_item_support} events",
                    min_value=min_item_support,
                )
                tables.append(_Table("items", items, ITEM, [spec]))
            else:
                skipped[name].append({"table": "items", "reason": f"needs column {ITEM}"})
        entries, split_failures = _run_tables(runner, df, name, tables)
        failures.extend(split_failures)
        report_splits[name] = {
            "n_rows": df.height,
            "n_sessions": sessions[name].height if name in sessions else None,
            "n_items": items.height if items is not None else None,
            "success": not split_failures,
            "expectations": entries,
            "skipped": skipped[name],
        }

    report = {
        "dataset": dataset,
        "success": not failures,
        "cut_test": to_builtin(cut_test),
        "cut_valid": to_builtin(cut_valid),
        "min_item_support": min_item_support,
        "min_session_length": min_session_length,
        "splits": report_splits,
        "seconds": round(time.perf_counter() - started, 4),
    }
    return conclude(
        report,
        report_splits,
        failures,
        f"splits {ordered}",
        lambda: _message(dataset, failures),
        raise_on_failure,
    )
