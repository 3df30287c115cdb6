"""Nodes of the preprocessing template: thin, typed wrappers around ``recsys_pipeline.preprocessing``.

Every dataset runs the same nodes (namespaced per dataset); ``params:preprocess`` is mapped to
``preprocess.<dataset>`` of ``conf/base/parameters_preprocess.yml``.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from recsys_pipeline.datasets import read_events
from recsys_pipeline.kedro_ext.datasets import RawSource
from recsys_pipeline.preprocessing import protocol as P

logger = logging.getLogger(__name__)

SPLITS = ("train_full", "test", "train_tr", "train_valid")


def _config(params: dict[str, Any]) -> P.ProtocolConfig:
    fields = P.ProtocolConfig.__dataclass_fields__
    unknown = set(params) - set(fields) - {"format", "reader_options"}
    if unknown:
        raise ValueError(
            f"unknown preprocessing parameter(s) {sorted(unknown)}; known: {sorted(fields)}"
        )
    return P.ProtocolConfig(**{k: v for k, v in params.items() if k in fields})


def ingest(raw: RawSource, params: dict[str, Any]) -> pl.DataFrame:
    """Raw files -> standard frame (key, ItemId, sort_item, Time, kept), read lazily/streaming.

    Protocols that never look at other event types (given sessions, or gaps measured on the kept
    views) drop them while reading.
    """
    config = _config(params)
    kept_only = (
        config.protocol == "rsc15" or config.session_mode == "given" or config.gap_on == "kept"
    )
    return read_events(
        params.get("format", raw.format),
        raw.directory,
        raw.files,
        kept_only=kept_only,
        **params.get("reader_options", {}),
    )


def check_raw_schema(
    events: pl.DataFrame, params: dict[str, Any], *, dataset: str | None = None
) -> dict[str, Any]:
    """Great Expectations check of the ingested events: columns, types, no null ids or times.
    The report and errors name ``dataset`` (default: the raw format)."""
    from recsys_pipeline.validation import validate_raw_events

    time_kind = "float" if _config(params).protocol == "rsc15" else "int"
    required = {"key": "int", "ItemId": "int", "sort_item": "int", "Time": time_kind}
    return validate_raw_events(events, dataset or params.get("format", "?"), required)


def sessionise(events: pl.DataFrame, params: dict[str, Any], raw_report: dict) -> pl.DataFrame:
    """Keep item views and cut sessions (given ids or the 1-hour gap), in protocol order."""
    del raw_report  # ordering only: sessionise runs on checked input
    config = _config(params)
    if config.protocol == "rsc15":
        return events.rename({"key": P.SESSION}).select(
            *P.OUTPUT_COLUMNS, pl.col(P.ITEM).alias("sort_item")
        )
    return P.sessionise(events, config.session_mode, config.gap_on, config.gap)


def remove_duplicates(sessions: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
    """One pass of consecutive-duplicate removal (none in the RSC15 protocol)."""
    if _config(params).protocol == "rsc15":
        return sessions.select(P.OUTPUT_COLUMNS)
    return P.remove_consecutive_duplicates(sessions)


def support_filter(
    deduplicated: pl.DataFrame, params: dict[str, Any]
) -> tuple[pl.DataFrame, list[dict]]:
    """Iterative length-1 / item-support filter until stable (one pass for RSC15)."""
    config = _config(params)
    if config.protocol == "rsc15":
        full, trace = P.rsc15_filter(
            deduplicated, config.min_item_support, config.min_session_length
        )
    else:
        full, trace = P.iterative_support_filter(
            deduplicated, config.min_item_support, config.min_session_length
        )
    return full, trace.steps


def split(
    full: pl.DataFrame, params: dict[str, Any], *, dataset: str | None = None
) -> tuple[dict[str, pl.DataFrame], dict]:
    """train_full/test and train_tr/train_valid by the dataset's time rule; returns the cuts too."""
    config = _config(params)
    dataset = dataset or params.get("format", "?")
    if config.protocol == "rsc15":
        splits, cuts = P.rsc15_splits(full, config.n_test_days, config.min_session_length)
    elif full.height == 0:
        splits, cuts = {name: full for name in SPLITS}, {}
    else:
        points = P.split_points(
            full, config.n_test_days, config.time_unit_seconds, config.fixed_tsplit
        )
        cuts = {"tsplit": points.tsplit, "cut_test": points.cut_test, "cut_valid": points.cut_valid}
        splits = P.protocol_splits(full, points, config.min_session_length)
    P.check_split_sizes(full, splits, cuts, config, dataset)
    return splits, cuts


def validate(
    full: pl.DataFrame,
    splits: dict[str, pl.DataFrame],
    cuts: dict,
    params: dict[str, Any],
    *,
    dataset: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    """Great Expectations on the outputs; only validated splits reach the catalog.

    Raises ``DataValidationError`` naming the expectation, dataset and offending rows.
    """
    from recsys_pipeline.validation import validate_splits

    config = _config(params)
    # RSC15's single pass ends with a length filter that can take an item's 5th event away, so
    # that protocol promises no item support in `full`; the 2023 protocol's loop promises it.
    support = 1 if config.protocol == "rsc15" else config.min_item_support
    report = validate_splits(
        {"full": full, **splits},
        dataset or params.get("format", "?"),
        cut_test=cuts.get("cut_test"),
        cut_valid=cuts.get("cut_valid"),
        min_item_support=support,
        min_session_length=config.min_session_length,
    )
    return full, *(splits[name] for name in SPLITS), report


def compute_stats(
    full: pl.DataFrame,
    train_full: pl.DataFrame,
    test: pl.DataFrame,
    train_tr: pl.DataFrame,
    train_valid: pl.DataFrame,
    trace: list[dict],
    cuts: dict,
    params: dict[str, Any],
    *,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Events, sessions, items and time range per split, the filter trace and the cut points."""
    config = _config(params)
    unit = config.time_unit_seconds
    frames = {
        "full": full,
        "train_full": train_full,
        "test": test,
        "train_tr": train_tr,
        "train_valid": train_valid,
    }
    stats = {name: P.frame_stats(df, unit) for name, df in frames.items()}
    known = train_full.select(P.ITEM).unique()
    test_known = test.join(known, on=P.ITEM, how="semi")
    stats["test"]["events_with_known_items"] = test_known.height
    for name, values in stats.items():
        logger.info(
            "%-12s %10d events %9d sessions %8d items  %s .. %s",
            name,
            values["events"],
            values["sessions"],
            values["items"],
            values.get("start_utc"),
            values.get("end_utc"),
        )
    return {
        "dataset": dataset or params.get("format"),
        "format": params.get("format"),
        "protocol": {k: v for k, v in vars(config).items()},
        "cuts": {k: float(v) if isinstance(v, float) else int(v) for k, v in cuts.items()},
        "cuts_utc": {k: P.iso_utc(v, unit) for k, v in cuts.items()},
        "splits": stats,
        "filter_trace": trace,
        "dtypes": {c: str(t) for c, t in full.schema.items()},
    }


def export_tsv(
    full: pl.DataFrame,
    train_full: pl.DataFrame,
    test: pl.DataFrame,
    train_tr: pl.DataFrame,
    train_valid: pl.DataFrame,
) -> tuple[pl.DataFrame, ...]:
    """The five splits as the official GRU4Rec tools read them (the catalog writes TSV)."""
    return full, train_full, test, train_tr, train_valid
