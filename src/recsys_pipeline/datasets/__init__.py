"""Raw readers, one module per published format, and :func:`read_events` that uses them."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from recsys_pipeline.datasets.base import RawDataError, RawFormat
from recsys_pipeline.datasets.coveo import Coveo
from recsys_pipeline.datasets.diginetica import Diginetica
from recsys_pipeline.datasets.movielens import VARIANTS as MOVIELENS_VARIANTS
from recsys_pipeline.datasets.movielens import read_ratings
from recsys_pipeline.datasets.rees46 import Rees46
from recsys_pipeline.datasets.retailrocket import RetailRocket
from recsys_pipeline.datasets.yoochoose import Rsc15, Yoochoose

logger = logging.getLogger(__name__)

FORMATS: dict[str, type[RawFormat]] = {
    "rees46": Rees46,
    "yoochoose": Yoochoose,
    "rsc15": Rsc15,
    "coveo": Coveo,
    "retailrocket": RetailRocket,
    "diginetica": Diginetica,
    **MOVIELENS_VARIANTS,  # ml-100k, ml-1m, ml-20m, ml-25m (ratings; see read_ratings)
}

STANDARD_COLUMNS = ("key", "ItemId", "sort_item", "Time", "kept")

__all__ = ["FORMATS", "RawDataError", "RawFormat", "get_format", "read_events", "read_ratings"]


def get_format(name: str, **options: object) -> RawFormat:
    """The reader of a published raw format (``options``: e.g. ``timezone`` for rsc15)."""
    try:
        cls = FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown raw format {name!r}; known: {sorted(FORMATS)}") from None
    return cls(**options)


def read_events(
    fmt: str,
    directory: str | Path,
    files: list[str] | None = None,
    *,
    kept_only: bool = False,
    **options: object,
) -> pl.DataFrame:
    """Read a dataset's raw files with polars' streaming engine into the standard frame.

    Columns ``key``, ``ItemId``, ``sort_item``, ``Time``, ``kept`` (see :class:`RawFormat`).
    ``kept_only`` drops the other event types (for protocols that never look at them): while
    reading where the format allows it, which keeps memory low, else after ranking ids over all
    rows (Rees46, Coveo rank ids in order of first appearance over every event type). Raises :class:`RawDataError` naming the file, column
    and first offending lines for missing files, wrong columns, empty files, unparsable,
    missing or negative values, an unbalanced quote, broken gzip files and non-UTF-8 bytes (a
    UTF-8 byte-order mark is accepted).
    """
    reader = get_format(fmt, **options)
    paths = reader.locate(directory, files)
    with reader.plain_files(paths) as plain:
        for path, shown in zip(plain, paths, strict=True):
            reader.header(path, shown_as=shown)
        reader.check_field_counts(plain, paths)
        lazy = reader.typed(plain)
        if kept_only and not reader.needs_all_rows:
            lazy = lazy.filter(pl.col("kept"))
        try:
            typed = lazy.collect(engine="streaming")
        except pl.exceptions.PolarsError as exc:
            if "utf-8" in str(exc).lower() or "utf8" in str(exc).lower():
                reader.explain_encoding(plain, paths)
            if "malformed" in str(exc).lower() or '"' in str(exc):
                reader.explain_quotes(plain, paths)
            raise RawDataError(f"{fmt}: could not read {[str(p) for p in paths]}: {exc}") from exc
        if typed.height == 0:
            raise RawDataError(f"{fmt}: no data rows in {[str(p) for p in paths]}")
        required = [c.name for c in reader.columns if not c.nullable and c.kind != "event"]
        if any(typed.get_column(c).null_count() for c in required):
            reader.explain_nulls(plain, paths)
        for column in reader.columns:
            if column.kind in ("int", "time") and (typed.get_column(column.name) < 0).any():
                reader.explain_negative(plain, paths, column.name)
    logger.info(
        "read %d raw events (%s format) from %s", typed.height, fmt, [p.name for p in paths]
    )
    events = reader.standardize(typed).lazy()
    if kept_only:
        events = events.filter(pl.col("kept"))
    return events.collect()
