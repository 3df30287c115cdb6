"""Great Expectations results as a Markdown page for people: one section per checked table
(the raw events, each split), one row per expectation, failures first.

The inputs are the JSON validation reports of :mod:`recsys_pipeline.validation` (raw events,
splits, user sequences, ratings): ``{"dataset", "success", "expectations": [...]}`` or
``{"dataset", "success", "splits": {name: {"n_rows", ..., "expectations": [...]}}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_SIZE = (("n_rows", "rows"), ("n_sessions", "sessions"), ("n_users", "users"),
         ("n_items", "items"))  # fmt: skip


#: report keys that are not settings the data was checked against
_NOT_SETTINGS = {"dataset", "artifact", "success", "seconds", "n_rows", "n_sessions", "n_users",
                 "n_items", "expectations", "splits", "artifacts", "columns"}  # fmt: skip


def _cell(value: Any, limit: int = 60) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _arguments(kwargs: Mapping[str, Any]) -> str:
    """The expectation's arguments in short: the column, then the bounds or the allowed set."""
    parts = []
    condition = kwargs.get("row_condition")
    if isinstance(condition, Mapping) and "parameter" in condition:
        parts.append(f"row {condition['parameter']}")
    for key in ("column", "value_set", "min_value", "max_value", "column_list"):
        if key in kwargs:
            parts.append(f"{key}={kwargs[key]}")
    return _cell(", ".join(parts))


def _observed(observed: Mapping[str, Any] | None) -> str:
    """Unexpected count and the first unexpected values, or the observed value."""
    if not observed:
        return ""
    if "unexpected_count" in observed:
        text = f"{observed['unexpected_count']:,} unexpected"
        if observed.get("element_count") is not None:
            text += f" of {observed['element_count']:,}"
        sample = observed.get("partial_unexpected_list") or observed.get("partial_missing_list")
        if sample:
            text += f"; e.g. {sample[:5]}"
        return _cell(text, 80)
    if "missing_count" in observed:
        missing = observed.get("partial_missing_list")
        return _cell(f"{observed['missing_count']:,} missing" + (f": {missing}" if missing else ""))
    if "observed_value" in observed:
        return _cell(f"observed {observed['observed_value']}", 80)
    return _cell(observed, 80)


def _section(title: str, part: Mapping[str, Any]) -> list[str]:
    expectations = list(part.get("expectations") or [])
    failed = [e for e in expectations if not e.get("success")]
    size = ", ".join(f"{part[k]:,} {label}" for k, label in _SIZE if part.get(k) is not None)
    verdict = "passed" if part.get("success", not failed) else f"FAILED ({len(failed)})"
    lines = [f"### {title}: {verdict}", ""]
    if size:
        lines += [f"{size}; {len(expectations)} expectations.", ""]
    if part.get("skipped"):
        lines += [f"Skipped: {', '.join(map(str, part['skipped']))}.", ""]
    if not expectations:
        return [*lines, "(no expectations)", ""]
    lines += ["| result | check | expectation | arguments | observed |", "|---|---|---|---|---|"]
    for e in sorted(expectations, key=lambda e: bool(e.get("success"))):
        mark = "pass" if e.get("success") else "**FAIL**"
        lines.append(
            f"| {mark} | {_cell(e.get('check', ''))} | {_cell(e.get('expectation', ''))} "
            f"| {_arguments(e.get('kwargs') or {})} | {_observed(e.get('observed'))} |"
        )
    return [*lines, ""]


def validation_page(*reports: Mapping[str, Any], dataset: str) -> str:
    """One Markdown page of every report (in order) of ``dataset``."""
    ok = all(r.get("success", False) for r in reports)
    lines = [f"# Data validation of {dataset}: {'passed' if ok else 'FAILED'}", "",
             "Great Expectations 1.x results, one table per checked table, failures first.",
             ""]  # fmt: skip
    for report in reports:
        parts = report.get("splits") or report.get("artifacts")
        what = report.get("artifact") or ("splits" if parts else "data")
        lines += [f"## {what}", ""]
        settings = {k: v for k, v in report.items() if k not in _NOT_SETTINGS
                    and isinstance(v, int | float | str) and not isinstance(v, bool)}  # fmt: skip
        if settings:
            lines += ["Checked against: "
                      + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".", ""]  # fmt: skip
        if parts:
            for name, part in parts.items():
                lines += _section(name, part)
        else:
            lines += _section(what, report)
    return "\n".join(lines).rstrip() + "\n"
