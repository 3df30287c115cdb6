"""MovieLens ratings (GroupLens): ``u.data`` (100K), ``ratings.dat`` (1M), ``ratings.csv`` (20M, 25M).

Published at https://grouplens.org/datasets/movielens/ . The variants differ only in layout:

- ``ml-100k``: ``u.data``, tab-separated ``user_id item_id rating unix_time``, no header;
- ``ml-1m``: ``ratings.dat``, ``UserID::MovieID::Rating::Timestamp``, no header;
- ``ml-20m`` / ``ml-25m``: ``ratings.csv``, header ``userId,movieId,rating,timestamp``.

Every variant is read (plain or ``.gz``) into the same *ratings frame*: ``UserId`` Int64,
``ItemId`` Int64 (raw ids), ``Rating`` Float64, ``Time`` Int64 (epoch seconds). polars reads
single-byte separators only, so ``::`` is scanned as ``:`` with every second field empty.
Non-numeric or missing ids, ratings or timestamps and negative ids or timestamps raise a
:class:`RawDataError` naming the file, the column and the first offending lines.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from recsys_pipeline.datasets.base import Column, RawDataError, RawFormat
from recsys_pipeline.preprocessing.protocol import ITEM, TIME

logger = logging.getLogger(__name__)

USER, RATING = "UserId", "Rating"
#: Columns of the ratings frame that :func:`read_ratings` returns.
RATING_COLUMNS = (USER, ITEM, RATING, TIME)
PUBLISHED_AT = "https://grouplens.org/datasets/movielens/"
# canonical raw column names (those of ratings.csv) -> ratings-frame names
_RENAME = {"userId": USER, "movieId": ITEM, "rating": RATING, "timestamp": TIME}
# raw columns that must not be negative (ids start at 1; times are epoch seconds)
_NON_NEGATIVE = ("userId", "movieId", "timestamp")


class MovieLens(RawFormat):
    """Common reader of the MovieLens rating files; subclasses set file, separator and header.

    Headerless variants name their fields by position (``positions``, 1-based, in the file as
    split by the single-byte ``separator``); ``shown_separator`` is the separator users see.
    """

    separator = "\t"
    shown_separator = "\t"
    has_header = False
    positions: dict[str, int] = {"userId": 1, "movieId": 2, "rating": 3, "timestamp": 4}
    columns = (
        Column("userId", "int"),
        Column("movieId", "int"),
        Column("rating", "float"),
        Column("timestamp", "int"),
    )
    time_unit_seconds = 1.0
    published_at = PUBLISHED_AT

    def _n_fields(self, line: str) -> int:
        return len(line.split(self.separator))

    def header(self, path: Path, shown_as: Path | None = None) -> list[str]:
        """Column names; for headerless files, check that line 1 has the published layout."""
        if self.has_header:
            return super().header(path, shown_as)
        shown = shown_as or path
        with open(path, "rb") as fh:
            first = fh.readline()
        if not first.strip():
            raise RawDataError(f"{self.name}: raw file is empty: {shown}")
        try:
            line = first.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise RawDataError(f"{self.name}: {shown} line 1 is not UTF-8: {first[:80]!r}") from exc
        n_shown = len(line.split(self.shown_separator))
        if n_shown < len(self.positions):
            raise RawDataError(
                f"{self.name}: {shown} line 1 has {n_shown} {self.shown_separator!r}-separated "
                f"field(s), the format has {len(self.positions)} "
                f"({' '.join(self.positions)}); first line: {line[:120]!r}"
            )
        return [f"column_{i + 1}" for i in range(self._n_fields(line))]

    def scan_strings(self, path: Path) -> pl.LazyFrame:
        """Lazy scan, every column a string, named ``userId``, ``movieId``, ``rating``, ``timestamp``."""
        if self.has_header:
            return super().scan_strings(path)
        names = self.header(path)
        lf = pl.scan_csv(
            path,
            separator=self.separator,
            has_header=False,
            infer_schema=False,
            quote_char=None,
            new_columns=names,
        )
        return lf.select(
            pl.col(f"column_{pos}").alias(name) for name, pos in self.positions.items()
        )

    def standardize(self, df: pl.DataFrame) -> pl.DataFrame:
        """The standard frame of :func:`recsys_pipeline.datasets.read_events`: key = the user."""
        return df.select(
            pl.col("userId").alias("key"),
            pl.col("movieId").alias(ITEM),
            pl.col("movieId").alias("sort_item"),
            pl.col("timestamp").alias(TIME),
            pl.lit(True).alias("kept"),
        )

    def explain_negatives(self, paths: list[Path], shown: list[Path]) -> None:
        """Raise a :class:`RawDataError` naming the file, column and first negative values."""
        for name in _NON_NEGATIVE:
            self.explain_negative(paths, shown, name)


class MovieLens100K(MovieLens):
    """``ml-100k/u.data``: tab-separated ``user_id item_id rating unix_time``, no header."""

    name = "ml-100k"
    files = ("u.data",)


class MovieLens1M(MovieLens):
    """``ml-1m/ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, no header."""

    name = "ml-1m"
    files = ("ratings.dat",)
    separator = ":"
    shown_separator = "::"
    positions = {"userId": 1, "movieId": 3, "rating": 5, "timestamp": 7}


class MovieLens20M(MovieLens):
    """``ml-20m/ratings.csv``: header ``userId,movieId,rating,timestamp``."""

    name = "ml-20m"
    files = ("ratings.csv",)
    separator = ","
    shown_separator = ","
    has_header = True


class MovieLens25M(MovieLens20M):
    """``ml-25m/ratings.csv``: the ml-20m layout."""

    name = "ml-25m"


#: The MovieLens variants by the name the ``variant`` parameter takes.
VARIANTS: dict[str, type[MovieLens]] = {
    cls.name: cls for cls in (MovieLens100K, MovieLens1M, MovieLens20M, MovieLens25M)
}


def get_variant(variant: str) -> MovieLens:
    """The reader of one MovieLens variant (``ml-100k``, ``ml-1m``, ``ml-20m``, ``ml-25m``)."""
    try:
        return VARIANTS[variant]()
    except KeyError:
        raise ValueError(
            f"unknown MovieLens variant {variant!r}; known: {sorted(VARIANTS)}"
        ) from None


def read_ratings(
    variant: str, directory: str | Path, files: list[str] | None = None
) -> pl.DataFrame:
    """Read a MovieLens rating file (plain or ``.gz``) from ``directory`` into the ratings frame.

    Args:
        variant: ``ml-100k`` (``u.data``), ``ml-1m`` (``ratings.dat``), ``ml-20m`` or ``ml-25m``
            (``ratings.csv``).
        directory: the folder holding the file, e.g. ``data/01_raw/movielens``.
        files: another file name than the variant's default (same layout).

    Returns:
        ``UserId`` Int64, ``ItemId`` Int64, ``Rating`` Float64, ``Time`` Int64 (epoch seconds),
        one row per line of the file, in file order.

    Raises:
        RawDataError: the file is missing (says where to put it and where it is published), empty,
            not the variant's layout, a broken gzip file, has lines with more or fewer fields
            than the first (or the header), or has missing, non-numeric or negative values
            (names the file, the column and the first offending lines).
    """
    reader = get_variant(variant)
    paths = reader.locate(directory, files)
    with reader.plain_files(paths) as plain:
        for path, shown in zip(plain, paths, strict=True):
            reader.header(path, shown_as=shown)
        reader.check_field_counts(plain, paths)
        lazy = reader.typed(plain).drop("kept")
        try:
            typed = lazy.collect(engine="streaming")
        except pl.exceptions.PolarsError as exc:
            if "utf-8" in str(exc).lower() or "utf8" in str(exc).lower():
                reader.explain_encoding(plain, paths)
            raise RawDataError(
                f"{variant}: could not read {[str(p) for p in paths]} as "
                f"{reader.shown_separator!r}-separated {' '.join(reader.positions)}: {exc}"
            ) from exc
        if typed.height == 0:
            raise RawDataError(f"{variant}: no data rows in {[str(p) for p in paths]}")
        if any(typed.get_column(c.name).null_count() for c in reader.columns):
            reader.explain_nulls(plain, paths)
        negative = typed.select(pl.any_horizontal(pl.col(_NON_NEGATIVE).min() < 0)).item()
        if negative:
            reader.explain_negatives(plain, paths)
    logger.info("%s: read %d ratings from %s", variant, typed.height, [p.name for p in paths])
    return typed.rename(_RENAME).select(RATING_COLUMNS)
