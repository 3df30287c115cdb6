"""A thin, lazily imported Great Expectations runtime: run a list of checks on one pandas table.

Great Expectations costs about 3 s to import, so it is imported on first use only, never at module
level. Every :class:`GxRunner` holds its own ephemeral (in-memory) data context with analytics and
progress bars off; nothing is written to disk.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: How many unexpected values (and their row indices) GX returns per failed map expectation.
PARTIAL_UNEXPECTED_COUNT = 20


@dataclass(frozen=True)
class Check:
    """One expectation, named, on one summary table.

    Attributes:
        name: short stable name used in reports and error messages (``min_session_length``).
        expectation: class name in ``great_expectations.expectations``
            (``ExpectColumnValuesToBeBetween``).
        kwargs: the expectation's arguments (plain python values).
        row_condition_column: when set with ``row_condition_value``, the expectation only sees the
            rows where this column equals that value (GX ``row_condition``).
        row_condition_value: see ``row_condition_column``.
        description: one sentence for humans, shown in error messages.
    """

    name: str
    expectation: str
    kwargs: dict[str, Any]
    row_condition_column: str | None = None
    row_condition_value: Any = None
    description: str = ""


@dataclass
class CheckResult:
    """What GX said about one :class:`Check`.

    Attributes:
        check: the check.
        success: whether the expectation held.
        expectation_type: GX's snake-case type (``expect_column_values_to_be_between``).
        kwargs: the expectation's kwargs as GX recorded them (JSON-ready, ``batch_id`` dropped).
        observed: ``observed_value`` for aggregate expectations, else the unexpected counts and
            the first unexpected values (JSON-ready).
        unexpected_index: row positions (in the validated table) of the first unexpected rows.
        missing: values of a set expectation that were expected but absent.
        unexpected_values: the first unexpected values.
        error: GX's exception message when evaluating the expectation raised.
    """

    check: Check
    success: bool
    expectation_type: str
    kwargs: dict[str, Any]
    observed: Any
    unexpected_index: list[int] = field(default_factory=list)
    missing: list[Any] = field(default_factory=list)
    unexpected_values: list[Any] = field(default_factory=list)
    error: str | None = None


def to_builtin(value: Any) -> Any:
    """Convert numpy/pandas/GX values, recursively, to plain JSON-serialisable python values.

    NaN and infinities become ``None``; dates become ISO strings; unknown objects their ``str``.
    """
    if isinstance(value, bool | str) or value is None:
        converted = value if type(value) in (bool, str) or value is None else str(value)
    elif isinstance(value, int):
        converted = int(value)
    elif isinstance(value, float):
        converted = float(value) if math.isfinite(value) else None
    elif isinstance(value, Mapping):
        converted = {str(key): to_builtin(item) for key, item in value.items()}
    elif isinstance(value, list | tuple | set | frozenset):
        converted = [to_builtin(item) for item in value]
    elif isinstance(value, datetime | date):
        converted = value.isoformat()
    else:
        converted = _other_to_builtin(value)
    return converted


def _other_to_builtin(value: Any) -> Any:
    """:func:`to_builtin` for numpy scalars and arrays, GX objects and anything else."""
    if hasattr(value, "to_json_dict"):
        return to_builtin(value.to_json_dict())
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
        return to_builtin(value.item())
    if hasattr(value, "tolist"):
        return to_builtin(value.tolist())
    return str(value)


def _import_gx() -> Any:
    """Import Great Expectations with analytics off (the import alone takes about 3 s)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    # GX pins this logger to INFO, which logs a line per ephemeral context ("Created temporary
    # directory ... for ephemeral docs site"); keep it for warnings.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    return gx


class GxRunner:
    """Runs :class:`Check` lists on pandas tables in one ephemeral GX context."""

    def __init__(self, name: str = "recsys_validation") -> None:
        """Create the ephemeral context and one pandas data source called ``name``."""
        gx = _import_gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self._source = self._context.data_sources.add_pandas(name)
        self._n_runs = 0

    def _expectation(self, check: Check) -> Any:
        """Build the GX expectation object of ``check``; ``meta["check"]`` carries its name."""
        kwargs = dict(check.kwargs)
        if check.row_condition_column is not None:
            from great_expectations.expectations.row_conditions import Column

            kwargs["row_condition"] = Column(check.row_condition_column) == (
                check.row_condition_value
            )
        cls = getattr(self._gx.expectations, check.expectation)
        return cls(**kwargs, meta={"check": check.name}, description=check.description or None)

    def run(
        self, table_name: str, frame: pd.DataFrame, checks: Sequence[Check]
    ) -> list[CheckResult]:
        """Validate ``frame`` (a summary table) against ``checks``; results in ``checks`` order.

        Args:
            table_name: label of the table, used to name the GX asset, suite and validation.
            frame: the table, with a default ``RangeIndex`` (so GX's unexpected row indices are
                row positions).
            checks: the checks; their names must be unique.

        Returns:
            One :class:`CheckResult` per check.
        """
        if not checks:
            return []
        gx = self._gx
        self._n_runs += 1
        label = f"{self._n_runs:03d}_{table_name}"
        batch = self._source.add_dataframe_asset(label).add_batch_definition_whole_dataframe("all")
        suite = self._context.suites.add(
            gx.ExpectationSuite(name=label, expectations=[self._expectation(c) for c in checks])
        )
        definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name=label, data=batch, suite=suite)
        )
        outcome = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT,
            },
        )
        by_name = {c.name: c for c in checks}
        results: dict[str, CheckResult] = {}
        for item in outcome.results:
            config = item.expectation_config
            check = by_name[(config.meta or {})["check"]]
            results[check.name] = _check_result(check, item)
        return [results[c.name] for c in checks]


def _check_result(check: Check, item: Any) -> CheckResult:
    """Turn one GX ``ExpectationValidationResult`` into a :class:`CheckResult`."""
    config = item.expectation_config
    raw = dict(item.result or {})
    info = item.exception_info or {}
    error = info.get("exception_message") if info.get("raised_exception") else None
    kwargs = {k: v for k, v in dict(config.kwargs).items() if k != "batch_id"}
    if raw.get("observed_value") is not None:
        observed: Any = raw["observed_value"]
    else:
        keys = (
            "element_count",
            "unexpected_count",
            "partial_unexpected_list",
            "missing_count",
            "partial_missing_list",
        )
        observed = {key: raw[key] for key in keys if key in raw}
        if "partial_unexpected_list" in observed:
            observed["partial_unexpected_list"] = observed["partial_unexpected_list"][:5]
    if error is not None:
        observed = {"error": error}
    return CheckResult(
        check=check,
        success=bool(item.success) and error is None,
        expectation_type=str(config.type),
        kwargs=to_builtin(kwargs),
        observed=to_builtin(observed),
        unexpected_index=[int(i) for i in raw.get("partial_unexpected_index_list") or []],
        missing=to_builtin(list(raw.get("partial_missing_list") or [])),
        unexpected_values=to_builtin(list(raw.get("partial_unexpected_list") or [])),
        error=error,
    )
