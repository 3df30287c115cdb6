"""Shared machinery of the raw readers: locating files, header checks, lazy typed scans, errors.

Every raw column is scanned as a string and cast with ``strict=False``; a value that fails its
cast (or is missing) becomes null, and :meth:`RawFormat.explain_nulls` re-scans the files to name
the file, the column and the first offending lines. Gzipped files are decompressed in a streaming
fashion to a temporary sibling file first (polars would otherwise inflate them in memory), which
also detects truncated archives.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys_pipeline.storage.partial import partial_suffix

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 5


class RawDataError(ValueError):
    """Raw input that cannot be read as the dataset's published format; the message says why."""


@dataclass(frozen=True)
class Column:
    """A raw column the protocol uses: its name in the file and how to type it."""

    name: str
    kind: str  # "int", "float", "str", "time" (parsed by the format) or "event" (-> ``kept``)
    nullable: bool = False


class RawFormat:
    """A published raw format: file names, separator, used columns and how to standardise them.

    Subclasses set the class attributes and implement :meth:`typed` and :meth:`standardize`.
    The standard frame that :meth:`standardize` returns (eager or lazy) has the columns ``key``
    (integer: the user, visitor or raw session a session is cut from, or the given session id),
    ``ItemId`` (the output item id), ``sort_item`` (integer: the tie-breaker for equal
    timestamps), ``Time``
    (Int64 in ``time_unit_seconds``; Float64 for RSC15) and ``kept`` (Boolean: the event is an
    item view that the protocol keeps).
    """

    name: str = ""
    files: tuple[str, ...] = ()
    separator: str = ","
    has_header: bool = True
    header_aliases: dict[str, str] = {}
    columns: tuple[Column, ...] = ()
    time_unit_seconds: float = 1.0
    published_at: str = ""
    kept_events: tuple[str, ...] = ()  # values of the "event" column that the protocol keeps

    @property
    def shown_separator(self) -> str:
        """The separator as users see it in the file (MovieLens 1M: ``::``, read as ``:``)."""
        return self.separator

    # True where standardize() looks across rows of every event type (first-appearance ranks)
    needs_all_rows: bool = False

    # ---------------------------------------------------------------- locating and checking files
    def locate(self, directory: str | Path, files: list[str] | None = None) -> list[Path]:
        """Resolve the raw files (plain or ``.gz``) in ``directory``; raise a helpful error if absent."""
        directory = Path(directory)
        found = []
        for name in files or self.files:
            candidates = [directory / name, directory / f"{name}.gz"]
            path = next((p for p in candidates if p.is_file()), None)
            folder = next((p for p in candidates if p.is_dir()), None)
            if path is None and folder is not None:
                raise RawDataError(
                    f"{self.name}: {folder} is a folder, not the raw file {name}; put the file "
                    f"itself there (published at {self.published_at})"
                )
            if path is None:
                raise RawDataError(
                    f"{self.name}: raw file not found: {candidates[0]} (or {candidates[1].name}). "
                    f"Put {', '.join(files or self.files)} in {directory}/ ; the dataset is "
                    f"published at {self.published_at}"
                )
            if path.stat().st_size == 0:
                raise RawDataError(f"{self.name}: raw file is empty: {path}")
            found.append(path)
        return found

    @contextmanager
    def plain_files(self, paths: list[Path]) -> Iterator[list[Path]]:
        """Yield plain-text paths: ``.gz`` files are inflated to temporary siblings, then removed."""
        temps: list[Path] = []
        try:
            out = []
            for path in paths:
                if path.suffix != ".gz":
                    out.append(path)
                    continue
                fd, tmp = tempfile.mkstemp(  # ".partial-<host>-<pid>": removed if we die
                    prefix=f".{path.stem}.", suffix=partial_suffix(), dir=path.parent
                )
                temps.append(Path(tmp))
                try:
                    with gzip.open(path, "rb") as src, open(fd, "wb") as dst:
                        shutil.copyfileobj(src, dst, length=16 << 20)
                except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
                    raise RawDataError(
                        f"{self.name}: {path} is not a complete gzip file ({exc}); "
                        "download it again or decompress it by hand to see where it breaks"
                    ) from exc
                out.append(Path(tmp))
            yield out
        finally:
            for tmp in temps:
                with suppress(FileNotFoundError):
                    tmp.unlink()

    def header(self, path: Path, shown_as: Path | None = None) -> list[str]:
        """The file's column names (after aliases), checked against the columns the protocol needs."""
        shown = shown_as or path
        with open(path, "rb") as fh:
            first = fh.readline()
        if not first.strip():
            raise RawDataError(f"{self.name}: raw file is empty: {shown}")
        try:
            line = first.decode("utf-8").rstrip("\r\n").removeprefix("\ufeff")  # a UTF-8 BOM
        except UnicodeDecodeError as exc:
            raise RawDataError(f"{self.name}: {shown} line 1 is not UTF-8: {first[:80]!r}") from exc
        if not self.has_header:
            n_fields = len(line.split(self.separator))
            needed = max(int(c.name.removeprefix("column_")) for c in self.columns)
            if n_fields < needed:
                raise RawDataError(
                    f"{self.name}: {shown} has {n_fields} fields per line, the format needs at "
                    f"least {needed} (first line: {line[:120]!r})"
                )
            return [f"column_{i + 1}" for i in range(n_fields)]
        names = [
            self.header_aliases.get(n.strip().strip('"'), n.strip().strip('"'))
            for n in line.split(self.separator)
        ]
        missing = [c.name for c in self.columns if c.name not in names]
        if missing:
            raise RawDataError(
                f"{self.name}: {shown} lacks column(s) {missing}; its header is {names}. "
                f"Expected a '{self.separator}'-separated file with the columns "
                f"{[c.name for c in self.columns]} (as published at {self.published_at})"
            )
        return names

    # ---------------------------------------------------------------- scanning
    def scan_strings(self, path: Path) -> pl.LazyFrame:
        """Lazy scan of one file with every column as a string, renamed to the canonical names."""
        names = self.header(path)
        lf = pl.scan_csv(
            path,
            separator=self.separator,
            has_header=self.has_header,
            infer_schema=False,
            quote_char='"',
            new_columns=None if self.has_header else names,
        )
        if self.has_header:
            lf = lf.rename(self.header_aliases, strict=False)
        return lf.select([c.name for c in self.columns])

    def cast(self, column: Column) -> pl.Expr:
        """Typed version of a string column; unparsable values become null."""
        col = pl.col(column.name)
        if column.kind == "int":
            return col.cast(pl.Int64, strict=False)
        if column.kind == "float":
            return col.cast(pl.Float64, strict=False)
        if column.kind == "time":
            return self.parse_time(col)
        return col

    def parse_time(self, col: pl.Expr) -> pl.Expr:  # pragma: no cover - overridden where used
        """Parse the format's timestamp column to the format's time unit."""
        raise NotImplementedError

    def typed(self, paths: list[Path]) -> pl.LazyFrame:
        """All files concatenated in order, used columns typed (nulls where parsing failed).

        An ``event`` column is replaced by the Boolean ``kept`` (its value is a kept event type);
        formats without one keep every row.
        """
        exprs = [self.cast(c).alias(c.name) for c in self.columns if c.kind != "event"]
        events = [c.name for c in self.columns if c.kind == "event"]
        kept = (
            pl.col(events[0]).is_in(list(self.kept_events)).fill_null(False)
            if events
            else pl.lit(True)
        )
        scans = [self.scan_strings(p).select(*exprs, kept.alias("kept")) for p in paths]
        return pl.concat(scans, how="vertical")

    def standardize(self, df: pl.DataFrame) -> pl.DataFrame | pl.LazyFrame:
        """Typed raw columns -> the standard frame (see the class docstring)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- errors
    def _offending(self, path: Path, bad: pl.Expr, name: str) -> tuple[int, int, str]:
        """``(rows shown, of them null, "line N: 'value'; ...")`` of the first lines of
        ``path`` where ``bad`` holds, with column ``name``'s raw value."""
        raw = self.scan_strings(path).with_row_index("line", offset=2 if self.has_header else 1)
        rows = (
            raw.filter(bad).select("line", pl.col(name).alias("value")).head(MAX_EXAMPLES).collect()
        )
        examples = "; ".join(
            f"line {r['line']}: {r['value']!r}" for r in rows.iter_rows(named=True)
        )
        return rows.height, rows["value"].null_count(), examples

    def explain_nulls(self, paths: list[Path], shown: list[Path]) -> None:
        """Raise a :class:`RawDataError` naming the file, column and first offending lines."""
        for path, shown_path in zip(paths, shown, strict=True):
            for column in self.columns:
                if column.nullable or column.kind == "event":
                    continue
                n, nulls, examples = self._offending(path, self.cast(column).is_null(), column.name)
                if n:
                    what = "missing" if nulls == n else "unparsable"
                    raise RawDataError(
                        f"{self.name}: {shown_path} column '{column.name}' has {what} values "
                        f"(expected {column.kind}); first offending rows: {examples}"
                    )

    def explain_negative(self, paths: list[Path], shown: list[Path], name: str) -> None:
        """Raise a :class:`RawDataError` naming the file, column ``name`` and the first lines
        with a negative value (ids and timestamps of the published data are never negative)."""
        column = next(c for c in self.columns if c.name == name)
        for path, shown_path in zip(paths, shown, strict=True):
            n, _, examples = self._offending(path, self.cast(column) < 0, name)
            if n:
                raise RawDataError(
                    f"{self.name}: {shown_path} column '{name}' has negative values (ids and "
                    f"times of this format are >= 0); first offending rows: {examples}"
                )

    def check_field_counts(self, paths: list[Path], shown: list[Path]) -> None:
        """Raise a :class:`RawDataError` naming the file and the first lines whose number of
        fields differs from the header's (or, without a header, the first line's): the
        published files have the same number on every line. One streaming pass over the
        lines; a line with more separators than fields is checked again by a strict parse
        of the whole file (a quoted field may hold the separator)."""
        sep = self.shown_separator
        for path, shown_path in zip(paths, shown, strict=True):
            n_columns = len(self.header(path, shown_as=shown_path))
            expected = n_columns
            if not self.has_header:  # the first line's fields as the user counts them
                with open(path, "rb") as fh:
                    first = fh.readline().decode("utf-8", "replace").rstrip("\r\n")
                expected = first.count(sep) + 1
            lines = pl.scan_csv(
                path, has_header=False, separator="\x1f", quote_char=None,
                new_columns=["text"], infer_schema=False, encoding="utf8-lossy",
            ).with_row_index("line", offset=1)  # fmt: skip
            if self.has_header:
                lines = lines.filter(pl.col("line") > 1)
            counts = lines.filter(pl.col("text").str.strip_chars("\r").str.len_bytes() > 0).select(
                "line", "text", (pl.col("text").str.count_matches(sep, literal=True) + 1).alias("n")
            )
            fewer = counts.filter(pl.col("n") < expected).head(MAX_EXAMPLES).collect()
            more = counts.filter(pl.col("n") > expected).head(MAX_EXAMPLES).collect()
            if more.height:
                try:  # strict: polars refuses more fields than the header has
                    pl.scan_csv(
                        path, separator=self.separator, has_header=self.has_header,
                        infer_schema=False, quote_char='"', new_columns=None if self.has_header
                        else [f"column_{i + 1}" for i in range(n_columns)],
                    ).collect(engine="streaming")  # fmt: skip
                    more = more.clear()  # quoted separators, not extra fields
                except pl.exceptions.PolarsError:
                    pass
            for bad, what in ((fewer, "fewer"), (more, "more")):
                if bad.height:
                    examples = "; ".join(
                        f"line {r['line']}: {r['n']} fields {r['text'][:80]!r}"
                        for r in bad.iter_rows(named=True)
                    )
                    raise RawDataError(
                        f"{self.name}: {shown_path} has lines with {what} {sep!r}-separated "
                        f"fields than the {expected} of its "
                        f"{'header' if self.has_header else 'first line'}; "
                        f"first offending rows: {examples}"
                    )

    def explain_quotes(self, paths: list[Path], shown: list[Path]) -> None:
        """Raise a :class:`RawDataError` naming the first line with an unbalanced ``"`` (a
        quoted field that never ends swallows the lines after it)."""
        for path, shown_path in zip(paths, shown, strict=True):
            with open(path, "rb") as fh:
                for number, line in enumerate(fh, start=1):
                    if line.count(b'"') % 2:
                        text = line[:120].decode("utf-8", "replace").rstrip("\r\n")
                        raise RawDataError(
                            f"{self.name}: {shown_path} line {number} has an unbalanced quote "
                            f'(") that never closes: {text!r}; remove it or close the quoted '
                            "field"
                        )

    def explain_encoding(self, paths: list[Path], shown: list[Path]) -> None:
        """Raise a :class:`RawDataError` naming the first line that is not valid UTF-8."""
        for path, shown_path in zip(paths, shown, strict=True):
            with open(path, "rb") as fh:
                for number, line in enumerate(fh, start=1):
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise RawDataError(
                            f"{self.name}: {shown_path} line {number} is not valid UTF-8 "
                            f"({exc.reason} at byte {exc.start}): {line[:120]!r}"
                        ) from exc
