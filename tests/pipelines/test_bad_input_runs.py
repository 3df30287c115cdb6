"""The bad-input matrix through ``kedro run --pipelines=preprocess_<format>`` (the CLI, in
process): every damage of ``tests/datasets/test_bad_input_matrix.py`` plus the two that only a
whole run can show (every event at one instant: an empty test period; every item seen once:
everything filtered out). A damaged file exits with status 1, the error names the file (and
the column and line where there is one) and ``data/`` holds exactly what it held before. Of
the harmless damages only a gzip file runs here (it is inflated by the run, into a temporary
file); the reader-level matrix shows that BOM, CRLF, duplicated and shuffled rows read as the
clean file.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from kedro.framework.cli.cli import KedroCLI

from recsys_pipeline.datasets import get_format
from recsys_pipeline.preprocessing.protocol import EmptySplitError
from recsys_pipeline.synthetic.sessions import SyntheticConfig, write_raw
from tests.datasets.test_bad_input_matrix import CASES, FORMATS, _damage, _lines, _set_field
from tests.pipelines.test_run_journal import _snapshot

#: big enough for every format's protocol to leave non-empty splits, small enough to be quick
SMALL = SyntheticConfig(n_events=3_000, n_items=60, n_users=300, seed=3)
RUN_ONLY = ["one_instant", "unique_items"]
HARMLESS = ["bom", "crlf", "duplicates", "shuffled"]  # the reader-level matrix covers them
RUN_CASES = [c for c in CASES if c not in HARMLESS] + RUN_ONLY


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One undamaged raw folder per format."""
    out = {}
    for fmt in FORMATS:
        folder = tmp_path_factory.mktemp(fmt)
        write_raw(fmt, folder, SMALL)
        out[fmt] = folder
    return out


def _every_line(fmt: str, path: Path, column: str, value: bytes | None) -> None:
    """Set ``column`` of every data line to ``value`` (``None``: a distinct id per line)."""
    reader = get_format(fmt)
    first = 2 if reader.has_header else 1
    for number in range(first, len(_lines(path)) + 1):
        _set_field(fmt, path, number, column, value or str(10**7 + number).encode())


def _run_only_damage(case: str, fmt: str, path: Path) -> str:
    _, id_column, time_column = FORMATS[fmt]
    if case == "one_instant":  # every event at the time of the file's first: no test period
        reader = get_format(fmt)
        line = _lines(path)[1 if reader.has_header else 0].split(reader.separator.encode())
        names = reader.header(path)
        if reader.has_header:
            names = [reader.header_aliases.get(n, n) for n in names]
        _every_line(fmt, path, time_column, line[names.index(time_column)])
        if fmt == "diginetica":  # its time is eventdate + timeframe
            _every_line(fmt, path, "timeframe", b"0")
        return r"has 0 sessions"
    item = "product_skus_hash" if fmt == "coveo" else id_column
    _every_line(fmt, path, item, None)  # unique_items: no item reaches the support
    return r"has 0 sessions"


@pytest.fixture
def project(shared_project: Path) -> Iterator[Path]:
    """The module's project with an empty ``data/`` for every test."""
    shutil.rmtree(shared_project / "data", ignore_errors=True)
    yield shared_project
    shutil.rmtree(shared_project / "data", ignore_errors=True)


@pytest.mark.parametrize("case", RUN_CASES)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_bad_input_through_kedro_run(
    fmt: str, case: str, clean: dict[str, Path], project: Path
) -> None:
    raw = project / "data/01_raw" / fmt
    shutil.copytree(clean[fmt], raw)
    path = raw / FORMATS[fmt][0]
    if case in RUN_ONLY:  # every file of the dataset (Rees46: two months, Yoochoose: two files)
        for name in get_format(fmt).files:
            expected = _run_only_damage(case, fmt, raw / name)
    else:
        expected = _damage(case)(fmt, path)
    before = _snapshot(project / "data")
    result = CliRunner().invoke(KedroCLI(project), ["run", f"--pipelines=preprocess_{fmt}"])
    if expected is None:
        assert result.exit_code == 0, (result.exception, result.output[-2000:])
        return
    assert result.exit_code == 1, result.output[-2000:]
    # one "Error: <type>: <message>" line (recsys_pipeline.cli), no traceback
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error: ")]
    message = line + result.output.split(line, 1)[1]  # a message may span lines
    assert re.search(expected, message, re.DOTALL), message
    assert fmt in message, message
    assert "Traceback" not in result.output and "╰─" not in result.output
    if case in RUN_ONLY:
        assert message.startswith(f"Error: {EmptySplitError.__name__}: ")
    elif case not in ("missing", "delimiter"):
        assert path.name in message, message
    assert _snapshot(project / "data") == before
