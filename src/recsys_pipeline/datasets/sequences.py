"""User-sequence data (SASRec-style): readers of three raw formats into one *sequence frame*.

Formats (plain or ``.gz``, whitespace-separated integer tokens, one record per line):

- ``pairs``: ``user item`` per line, the lines of a user contiguous and in chronological order
  (SASRec's ``Video.txt``, BERT4Rec's ``beauty.txt``). No timestamps.
- ``lines``: one line per user, ``user i1 i2 ...`` in chronological order (the S3-Rec/ICLRec
  files ``Beauty.txt``, ``Sports_and_Outdoors.txt``, ``Toys_and_Games.txt``). No timestamps.
- ``movielens``: a MovieLens rating file read by
  :func:`recsys_pipeline.datasets.movielens.read_ratings` (``ml-100k`` ``u.data``, ``ml-1m``
  ``ratings.dat``, ``ml-20m``/``ml-25m`` ``ratings.csv``); every rating is an implicit
  interaction (optionally only ratings ``>= min_rating``).

The sequence frame: ``UserId`` Int64, ``ItemId`` Int64, ``Time`` Int64, one row per event, sorted
by ``UserId`` and, within a user, in chronological order. **Row order is the sequence order.**

- ``pairs`` / ``lines``: ``Time`` is the 0-based position of the event in its user's sequence
  (file order); the formats have no real times (:data:`HAS_TIMES`).
- ``movielens``: ``Time`` is the rating's epoch second. Ties (a user's ratings in the same second,
  common in MovieLens) are broken by the line order in the file: the frame is a *stable* sort of
  the file by (``UserId``, ``Time``). A later stable sort by (``UserId``, ``Time``), e.g. polars'
  ``sort(..., maintain_order=True)``, keeps that order; an unstable one may not.

Repeats are kept: the text formats may legitimately hold an item twice in a user's sequence, and
a MovieLens (user, item) pair that occurs twice stays twice (the published files have none).

Bad input raises :class:`RawDataError` naming the file, the line, the column (the 1-based field
of the line: 1 = the user, 2.. = the items) and the first offending rows: a missing or empty
file, a non-integer or out-of-range token, a negative id, a wrong number of fields, a ``pairs``
user whose lines are not contiguous, a ``lines`` user on two lines, non-UTF-8 bytes and broken
gzip files. No Kedro here.

:func:`read_item_catalog` reads an optional **item catalogue** (every item id a model may rank,
including items nobody interacted with: MovieLens' ``movies.dat``, ``u.item``, ``movies.csv`` or
a plain list of ids), for protocols that rank the whole catalogue as generative-recommenders does.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import polars as pl

from recsys_pipeline.datasets.base import MAX_EXAMPLES, RawDataError, RawFormat
from recsys_pipeline.datasets.movielens import get_variant, read_ratings

logger = logging.getLogger(__name__)

USER, ITEM, TIME = "UserId", "ItemId", "Time"
#: Columns of the sequence frame, in order.
SEQUENCE_COLUMNS = (USER, ITEM, TIME)
SEQUENCE_SCHEMA = {USER: pl.Int64, ITEM: pl.Int64, TIME: pl.Int64}
#: The formats :func:`read_sequences` reads and whether their ``Time`` is a real time.
HAS_TIMES = {"pairs": False, "lines": False, "movielens": True}
FORMATS = tuple(HAS_TIMES)

_LINE, _FIELD, _TOKEN, _VALUE = "line", "field", "token", "value"
#: a catalogue line: its integer id first, then the end of the line or a separator
_CATALOG_LINE = r"^\s*(\d+)(?:$|::|[|,\t \r])"


class _TextSequences(RawFormat):
    """A text sequence format: only :meth:`RawFormat.locate` (the missing-file message) is used."""

    has_header = False
    published_at = (
        "the SASRec (kang205/SASRec), BERT4Rec (FeiSun/BERT4Rec) or S3-Rec/ICLRec "
        "(salesforce/ICLRec) repositories' data/ folders"
    )

    def __init__(self, name: str, file: str) -> None:
        self.name = name
        self.files = (file,)


def _read_bytes(path: Path) -> bytes:
    """The bytes of ``path`` (``.gz`` inflated in memory); a broken gzip file is a clear error."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise RawDataError(
            f"{path} is not a complete gzip file ({exc}); download it again or decompress it "
            "by hand to see where it breaks"
        ) from exc
    return data


def _read_text(path: Path) -> str:
    """The decoded text of ``path`` (``.gz`` inflated in memory); errors name the line."""
    data = _read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        raise RawDataError(
            f"{path} line {number} is not valid UTF-8 ({exc.reason} at byte {exc.start}): "
            f"{data[start : end if end >= 0 else None][:120]!r}"
        ) from exc


def _lines(path: Path) -> pl.DataFrame:
    """``line`` (1-based number, Int64) and ``tokens`` (list of whitespace-separated strings)."""
    text = _read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    if not any(line.strip() for line in lines):
        raise RawDataError(f"raw file is empty (no data lines): {path}")
    return (
        pl.DataFrame({"text": lines}, schema={"text": pl.String})
        .with_row_index(_LINE, offset=1)
        .with_columns(pl.col(_LINE).cast(pl.Int64), pl.col("text").str.extract_all(r"\S+"))
        .rename({"text": "tokens"})
    )


def _examples(rows: pl.DataFrame, what: str = _TOKEN) -> str:
    """``line 3, column 2: 'x'; ...`` for the first :data:`MAX_EXAMPLES` offending rows."""
    shown = rows.head(MAX_EXAMPLES)
    return "; ".join(
        f"line {r[_LINE]}, column {r[_FIELD]}: {r[what]!r}" for r in shown.iter_rows(named=True)
    )


def _check_field_counts(lines: pl.DataFrame, path: Path, fmt: str) -> None:
    """Every ``pairs`` line has exactly 2 fields; every ``lines`` line at least 2."""
    n_fields = pl.col("tokens").list.len()
    bad = lines.filter(n_fields != 2 if fmt == "pairs" else n_fields < 2)
    if bad.height:
        expected = "exactly 2 fields (user item)" if fmt == "pairs" else "at least 2 fields"
        shown = bad.head(MAX_EXAMPLES).select(
            _LINE, n_fields.alias("n"), pl.col("tokens").list.join(" ").alias("text")
        )
        examples = "; ".join(
            f"line {r[_LINE]}: {r['n']} field(s) {r['text'][:80]!r}"
            for r in shown.iter_rows(named=True)
        )
        raise RawDataError(
            f"{fmt}: {path} line {bad[_LINE][0]} has a wrong number of fields: every line needs "
            f"{expected}, whitespace-separated ({bad.height} line(s) affected); first offending "
            f"rows: {examples}"
        )


def _typed_tokens(lines: pl.DataFrame, path: Path, fmt: str) -> pl.DataFrame:
    """One row per token: ``line``, ``field`` (1-based), ``value`` (Int64); checks the values."""
    tokens = (
        lines.explode("tokens")
        .rename({"tokens": _TOKEN})
        .with_columns((pl.int_range(pl.len()).over(_LINE) + 1).cast(pl.Int64).alias(_FIELD))
        .with_columns(pl.col(_TOKEN).cast(pl.Int64, strict=False).alias(_VALUE))
    )
    bad = tokens.filter(pl.col(_VALUE).is_null())
    if bad.height:
        first = bad.row(0, named=True)
        raise RawDataError(
            f"{fmt}: {path} line {first[_LINE]} column {first[_FIELD]} is not an integer id "
            f"({first[_TOKEN]!r}; {bad.height} token(s) affected; column 1 is the user, the "
            f"others items); first offending rows: {_examples(bad)}"
        )
    negative = tokens.filter(pl.col(_VALUE) < 0)
    if negative.height:
        first = negative.row(0, named=True)
        raise RawDataError(
            f"{fmt}: {path} line {first[_LINE]} column {first[_FIELD]} has a negative id "
            f"({first[_TOKEN]!r}; ids are >= 0); first offending rows: {_examples(negative)}"
        )
    return tokens.select(_LINE, _FIELD, _VALUE)


def _check_contiguous(rows: pl.DataFrame, path: Path, fmt: str) -> None:
    """Every user's lines form one block (``pairs``) / every user is on one line (``lines``).

    ``rows``: one row per line in file order with ``line`` and ``UserId``.
    """
    if fmt == "pairs":  # one row per block of equal consecutive users
        starts = rows.filter(pl.col(USER).ne_missing(pl.col(USER).shift(1)))
    else:
        starts = rows
    again = starts.filter(pl.col(USER).is_duplicated() & ~pl.col(USER).is_first_distinct())
    if again.height:
        first_lines = starts.group_by(USER).agg(pl.col(_LINE).min().alias("first_line"))
        shown = again.join(first_lines, on=USER).sort(_LINE).head(MAX_EXAMPLES)
        examples = "; ".join(
            f"line {r[_LINE]}, column 1: user {r[USER]} (seen before on line {r['first_line']})"
            for r in shown.iter_rows(named=True)
        )
        rule = (
            "the lines of a user must be contiguous (one block per user, in chronological order)"
            if fmt == "pairs"
            else "every user must be on exactly one line"
        )
        raise RawDataError(
            f"{fmt}: {path} line {shown[_LINE][0]} column 1: user {shown[USER][0]} appears "
            f"again after other users' lines; {rule}; first offending rows: {examples}"
        )


def _read_text_sequences(fmt: str, path: Path) -> pl.DataFrame:
    """A ``pairs`` or ``lines`` file -> the sequence frame (``Time`` = position in the user)."""
    lines = _lines(path)
    _check_field_counts(lines, path, fmt)
    tokens = _typed_tokens(lines, path, fmt)
    users = tokens.filter(pl.col(_FIELD) == 1).select(_LINE, pl.col(_VALUE).alias(USER))
    _check_contiguous(users, path, fmt)
    events = tokens.filter(pl.col(_FIELD) > 1).join(
        users, on=_LINE, how="left", maintain_order="left"
    )
    return (
        events.select(
            pl.col(USER),
            pl.col(_VALUE).alias(ITEM),
            pl.int_range(pl.len(), dtype=pl.Int64).over(USER).alias(TIME),
        )
        .sort(USER, TIME)
        .cast(SEQUENCE_SCHEMA)
    )


class _Catalog(RawFormat):
    """An item catalogue file: only :meth:`RawFormat.locate` (the missing-file message) is used."""

    has_header = False
    published_at = "the dataset's own site (MovieLens: grouplens.org, movies.dat / u.item)"

    def __init__(self, file: str) -> None:
        self.name = "item catalogue"
        self.files = (file,)


def read_item_catalog(directory: str | Path, file: str) -> pl.DataFrame:
    """Every item id of a catalogue file (plain or ``.gz``): ``ItemId`` (Int64), ascending.

    One item per line, its non-negative integer id first, followed by the end of the line or a
    separator (``::``, ``|``, ``,``, tab or space): MovieLens-1M's ``movies.dat``
    (``1::Toy Story (1995)::...``), ML-100K's ``u.item`` (``1|Toy Story (1995)|...``),
    ML-20M's ``movies.csv`` (its header line, the first line when it does not start with a
    digit, is skipped) or a plain list of ids. Titles are never decoded (any encoding works);
    blank lines are skipped.

    Raises:
        RawDataError: a missing or empty file, a line without a leading id (names the file, the
            line and the first offending lines), an id listed twice.
    """
    (path,) = _Catalog(file).locate(directory)
    data = _read_bytes(path)
    # latin-1 maps every byte to a character: the ASCII ids read the same in any encoding
    lines = pl.DataFrame({"shown": data.decode("latin-1").split("\n")}, schema={"shown": pl.String})
    lines = lines.with_row_index(_LINE, offset=1).with_columns(pl.col(_LINE).cast(pl.Int64))
    lines = lines.filter(pl.col("shown").str.strip_chars() != "")
    if lines.height == 0:
        raise RawDataError(f"item catalogue {path} has no lines")
    ids = lines.with_columns(
        pl.col("shown").str.extract(_CATALOG_LINE, 1).cast(pl.Int64, strict=False).alias(ITEM)
    )
    first = ids.row(0, named=True)
    if first[ITEM] is None and not first["shown"].lstrip()[:1].isdigit():
        ids = ids.slice(1)  # a header line (movies.csv: movieId,title,genres)
    bad = ids.filter(pl.col(ITEM).is_null())
    if bad.height:
        shown = "; ".join(
            f"line {r[_LINE]}: {r['shown'][:60]!r}"
            for r in bad.head(MAX_EXAMPLES).iter_rows(named=True)
        )
        raise RawDataError(
            f"item catalogue {path} line {bad[_LINE][0]}, column 1 has no integer item id: each "
            f"line starts with the id, then '::', '|', ',', a tab, a space or the end of the "
            f"line ({bad.height} line(s) affected); first offending rows: {shown}"
        )
    twice = ids.filter(pl.col(ITEM).is_duplicated())
    if twice.height:
        shown = "; ".join(
            f"line {r[_LINE]}: {r[ITEM]}" for r in twice.head(MAX_EXAMPLES).iter_rows(named=True)
        )
        raise RawDataError(
            f"item catalogue {path} column 1 lists an id twice (line {twice[_LINE][0]}, "
            f"{twice.height} line(s) affected); first offending rows: {shown}"
        )
    logger.info("item catalogue: %d items from %s", ids.height, path)
    return ids.select(ITEM).sort(ITEM)


def _read_movielens(
    variant: str, directory: Path, file: str | None, min_rating: float | None
) -> pl.DataFrame:
    """A MovieLens rating file -> the sequence frame (``Time`` = epoch seconds, stable order)."""
    ratings = read_ratings(variant, directory, [file] if file else None)
    if min_rating is not None:
        ratings = ratings.filter(pl.col("Rating") >= min_rating)
        if ratings.height == 0:
            raise RawDataError(f"{variant}: no rating >= min_rating={min_rating} in {directory}")
    # ratings are in file order; a stable sort keeps it for equal (UserId, Time)
    return ratings.sort(USER, TIME, maintain_order=True).select(SEQUENCE_COLUMNS)


def read_sequences(
    fmt: str,
    directory: str | Path,
    file: str | None = None,
    *,
    variant: str | None = None,
    min_rating: float | None = None,
) -> pl.DataFrame:
    """Read a user-sequence file (plain or ``.gz``) into the sequence frame.

    Args:
        fmt: ``pairs``, ``lines`` or ``movielens`` (see the module docstring).
        directory: the folder holding the file, e.g. ``data/01_raw/video``.
        file: the file name (``Video.txt``; ``x.txt`` also finds ``x.txt.gz``); for
            ``movielens`` the variant's default (``u.data``, ``ratings.dat``, ...) when None.
        variant: the MovieLens variant (``ml-100k``, ``ml-1m``, ``ml-20m``, ``ml-25m``); only for
            ``movielens``.
        min_rating: keep only ratings ``>= min_rating`` (``movielens`` only; None keeps all).

    Returns:
        ``UserId``, ``ItemId``, ``Time`` (Int64), one row per event, sorted by ``UserId`` then
        chronologically; ``Time`` is the position in the user's sequence (``pairs``, ``lines``)
        or epoch seconds with ties in file order (``movielens``).

    Raises:
        ValueError: an unknown format or variant, or a parameter the format does not take.
        RawDataError: missing, empty or malformed input (names file, line, column and the first
            offending rows).
    """
    if fmt not in HAS_TIMES:
        raise ValueError(f"unknown sequence format {fmt!r}; known: {list(FORMATS)}")
    directory = Path(directory)
    if fmt == "movielens":
        if variant is None:
            raise ValueError("format 'movielens' needs a variant (ml-100k, ml-1m, ...)")
        frame = _read_movielens(variant, directory, file, min_rating)
        shown = file or get_variant(variant).files[0]
    else:
        if variant is not None or min_rating is not None:
            raise ValueError(f"variant and min_rating are for format 'movielens', not {fmt!r}")
        if not file:
            raise ValueError(f"format {fmt!r} needs a file name")
        (path,) = _TextSequences(fmt, file).locate(directory)
        frame = _read_text_sequences(fmt, path)
        shown = path.name
    logger.info(
        "%s: read %d events of %d users (%d items) from %s",
        fmt,
        frame.height,
        frame.get_column(USER).n_unique(),
        frame.get_column(ITEM).n_unique(),
        directory / shown,
    )
    return frame
