"""The bad-input matrix: every raw format x every kind of damage, each a clear
:class:`RawDataError` naming the file (and the column and line where there is one), or read as
the undamaged file where the damage is harmless (BOM, CRLF, gzip, shuffled or duplicated rows).

The pipeline-level guarantees (the run fails before anything is written, ``data/`` unchanged,
empty splits named with their cut) are in ``tests/pipelines/test_run_journal.py`` and
``tests/pipelines/test_preprocess_pipelines.py``.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from recsys_pipeline.datasets import RawDataError, get_format, read_events
from recsys_pipeline.synthetic.sessions import SyntheticConfig, write_raw

TINY = SyntheticConfig(n_events=400, n_items=30, n_users=40, seed=2)
#: format -> (the file damaged, a required id column, the time column) as the reader names them
FORMATS = {
    "retailrocket": ("events.csv", "itemid", "timestamp"),
    "rees46": ("2019-Oct.csv", "product_id", "event_time"),
    "diginetica": ("train-item-views.csv", "itemId", "eventdate"),
    "yoochoose": ("yoochoose-clicks.dat", "column_3", "column_2"),
    "coveo": ("release_10_23_2020.csv", "server_timestamp_epoch_ms", "server_timestamp_epoch_ms"),
}


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _set_field(fmt: str, path: Path, line_no: int, column: str, value: bytes) -> None:
    """Replace ``column`` of line ``line_no`` (1-based, header included) by ``value``."""
    reader = get_format(fmt)
    lines = _lines(path)
    sep = reader.separator.encode()
    names = reader.header(path)
    if reader.has_header:
        names = [reader.header_aliases.get(n, n) for n in names]
    fields = lines[line_no - 1].split(sep)
    fields[names.index(column)] = value
    lines[line_no - 1] = sep.join(fields)
    path.write_bytes(b"\n".join(lines) + b"\n")


def _damage(case: str) -> Callable[[str, Path], str | None]:
    """Damage of the file ``path`` of format ``fmt``; returns the expected message pattern
    (``None``: the file still reads as before)."""

    def apply(fmt: str, path: Path) -> str | None:  # noqa: PLR0911, PLR0912 - one case each
        reader = get_format(fmt)
        _, id_column, time_column = FORMATS[fmt]
        first_data = 2 if reader.has_header else 1
        if case == "missing":
            path.unlink()
            return rf"raw file not found: .*{path.name}"
        if case == "empty":
            path.write_bytes(b"")
            return "raw file is empty"
        if case == "header_only":
            if not reader.has_header:
                pytest.skip("a headerless format has no header-only file")
            for other in path.parent.iterdir():  # every file of the dataset (Rees46 has two)
                other.write_bytes(_lines(other)[0] + b"\n")
            return "no data rows"
        if case == "wrong_columns":
            if not reader.has_header:
                pytest.skip("a headerless format has no column names")
            lines = _lines(path)
            lines[0] = lines[0].replace(id_column.encode(), b"something_else")
            path.write_bytes(b"\n".join(lines) + b"\n")
            return rf"lacks column\(s\) \[.*'{id_column}'"
        if case == "delimiter":
            sep = reader.separator.encode()
            path.write_bytes(path.read_bytes().replace(sep, b"|"))
            return "lacks column|fields per line"
        if case == "unparsable_time":
            _set_field(fmt, path, first_data + 1, time_column, b"soon")
            return rf"column '{time_column}' has unparsable values .*line {first_data + 1}: 'soon'"
        if case == "missing_id":
            _set_field(fmt, path, first_data + 2, id_column, b"")
            return rf"column '{id_column}' has missing values .*line {first_data + 2}"
        if case == "nan_id":
            if fmt == "coveo":
                pytest.skip("coveo's ids are hashes: any string is an id")
            _set_field(fmt, path, first_data + 2, id_column, b"NaN")
            return rf"column '{id_column}' has unparsable values .*line {first_data + 2}: 'NaN'"
        if case == "negative_id":
            if fmt == "coveo":
                pytest.skip("coveo's ids are hashes")
            _set_field(fmt, path, first_data + 1, id_column, b"-7")
            return rf"column '{id_column}' has negative values .*line {first_data + 1}: '-7'"
        if case == "huge_id":
            if fmt == "coveo":
                pytest.skip("coveo's ids are hashes")
            _set_field(fmt, path, first_data + 1, id_column, b"99999999999999999999999")
            return rf"column '{id_column}' has unparsable values .*line {first_data + 1}"
        if case == "non_utf8":
            lines = _lines(path)
            lines[first_data + 1] = lines[first_data + 1] + b"\xff\xfe"
            path.write_bytes(b"\n".join(lines) + b"\n")
            return rf"line {first_data + 2} is not valid UTF-8"
        if case == "stray_quote":
            lines = _lines(path)
            lines[first_data + 1] = lines[first_data + 1] + b'"'
            path.write_bytes(b"\n".join(lines) + b"\n")
            return rf"line {first_data + 2} has an unbalanced quote"
        if case in ("extra_fields", "fewer_fields"):
            lines = _lines(path)
            sep = reader.separator.encode()
            row = lines[first_data + 1]
            lines[first_data + 1] = (
                row + sep + b"x" if case == "extra_fields" else row.rsplit(sep, 1)[0]
            )
            path.write_bytes(b"\n".join(lines) + b"\n")
            what = "more" if case == "extra_fields" else "fewer"
            return rf"has lines with {what} .*-separated fields than the \d+ of its .*line {first_data + 2}"
        if case == "truncated_gzip":
            data = path.read_bytes()
            gz = path.with_name(path.name + ".gz")
            packed = gzip.compress(data)
            gz.write_bytes(packed[: len(packed) // 2])
            path.unlink()
            return "is not a complete gzip file"
        if case == "directory":
            path.unlink()
            path.mkdir()
            return "is a folder, not the raw file"
        if case == "gzip":
            gz = path.with_name(path.name + ".gz")
            gz.write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
            return None
        if case == "bom":
            if not reader.has_header:
                pytest.skip("the published headerless files have no BOM")
            path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
            return None
        if case == "crlf":
            path.write_bytes(b"\r\n".join(_lines(path)) + b"\r\n")
            return None
        if case in ("duplicates", "shuffled"):
            lines = _lines(path)
            head, body = lines[: first_data - 1], lines[first_data - 1 :]
            body = body + body[:5] if case == "duplicates" else body[::-1]
            path.write_bytes(b"\n".join(head + body) + b"\n")
            return None
        raise AssertionError(case)

    return apply


CASES = ["missing", "empty", "header_only", "wrong_columns", "delimiter", "unparsable_time",
         "missing_id", "nan_id", "negative_id", "huge_id", "non_utf8", "stray_quote",
         "extra_fields", "fewer_fields", "truncated_gzip", "directory", "gzip", "bom", "crlf",
         "duplicates", "shuffled"]  # fmt: skip


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One undamaged raw folder per format."""
    out = {}
    for fmt in FORMATS:
        folder = tmp_path_factory.mktemp(fmt)
        write_raw(fmt, folder, TINY)
        out[fmt] = folder
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_bad_input_matrix(fmt: str, case: str, clean: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / fmt
    shutil.copytree(clean[fmt], folder)
    expected = read_events(fmt, clean[fmt])
    path = folder / FORMATS[fmt][0]
    message = _damage(case)(fmt, path)
    if message is None:
        got = read_events(fmt, folder)
        key = list(got.columns)  # first-appearance ranks keep no row order: compare sets
        if case == "duplicates":
            assert got.height == expected.height + 5
            got = got.unique(maintain_order=True)
            expected = expected.unique(maintain_order=True)
        if case == "shuffled" and fmt in ("coveo", "rees46"):  # ids ranked by first appearance
            key = ["Time"]
            got, expected = got.select(key), expected.select(key)
        assert got.sort(key).equals(expected.sort(key)), case
        assert not [p for p in folder.rglob("*") if ".partial-" in p.name]
        return
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(RawDataError, match=message) as err:
        read_events(fmt, folder)
    assert fmt in str(err.value)
    if case not in ("missing", "delimiter"):
        assert path.name in str(err.value), str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing left behind


def test_the_matrix_covers_every_session_format() -> None:
    from recsys_pipeline.datasets import FORMATS as KNOWN

    session_formats = {n for n in KNOWN if not n.startswith("ml-")} - {"rsc15"}  # = yoochoose
    assert session_formats == set(FORMATS)
