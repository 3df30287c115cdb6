"""MovieLens readers: the three layouts read identically; bad input names file, column, rows."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from recsys_pipeline.datasets import RawDataError, read_events, read_ratings
from recsys_pipeline.synthetic.ratings import RatingsConfig, generate_ratings, write_ratings

CONFIG = RatingsConfig(n_users=60, n_items=80, n_ratings=1_500, seed=2)
LAYOUTS = {
    "ml-100k": ("u.data", "1\t31\t3\t881250949\n"),
    "ml-1m": ("ratings.dat", "1::31::3::881250949\n"),
    "ml-20m": ("ratings.csv", "userId,movieId,rating,timestamp\n1,31,3.0,881250949\n"),
}


@pytest.fixture(scope="module")
def ratings() -> pl.DataFrame:
    return generate_ratings(CONFIG)


@pytest.mark.parametrize("gzipped", [False, True])
def test_variants_read_identically(tmp_path: Path, ratings: pl.DataFrame, gzipped: bool):
    frames = {}
    for variant in ("ml-100k", "ml-1m", "ml-20m", "ml-25m"):
        path = write_ratings(variant, tmp_path / variant, ratings=ratings, gzipped=gzipped)
        assert path.name.endswith(".gz") == gzipped
        frames[variant] = read_ratings(variant, tmp_path / variant)
    for variant, df in frames.items():
        assert df.schema == pl.Schema(
            {"UserId": pl.Int64, "ItemId": pl.Int64, "Rating": pl.Float64, "Time": pl.Int64}
        ), variant
        assert df.equals(ratings), variant
    assert not list(tmp_path.rglob("*.partial-*")), "temporary inflated files must be removed"


def test_read_events_gives_the_standard_frame(tmp_path: Path, ratings: pl.DataFrame):
    write_ratings("ml-1m", tmp_path, ratings=ratings)
    events = read_events("ml-1m", tmp_path)
    assert events.columns == ["key", "ItemId", "sort_item", "Time", "kept"]
    assert events["key"].equals(ratings["UserId"].alias("key"))


def test_missing_file_says_where_to_put_it_and_where_it_is_published(tmp_path: Path):
    with pytest.raises(RawDataError) as err:
        read_ratings("ml-1m", tmp_path)
    message = str(err.value)
    assert "ratings.dat" in message and str(tmp_path) in message and "grouplens.org" in message


def test_unknown_variant(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown MovieLens variant 'ml-10k'"):
        read_ratings("ml-10k", tmp_path)


def write(tmp_path: Path, variant: str, body: str) -> Path:
    name, good = LAYOUTS[variant]
    path = tmp_path / name
    path.write_text(good + body)
    return path


@pytest.mark.parametrize(
    ("variant", "body", "column", "line"),
    [
        ("ml-100k", "2\tabc\t4\t881250950\n", "movieId", "line 2: 'abc'"),
        ("ml-100k", "2\t3\t4\t-5\n", "timestamp", "line 2: '-5'"),
        ("ml-1m", "2::3::4::881250950\nx2::3::4::1\n", "userId", "line 3: 'x2'"),
        ("ml-1m", "2::3::four::881250950\n", "rating", "line 2: 'four'"),
        ("ml-20m", "2,3,4.0,\n", "timestamp", "line 3: None"),
        ("ml-20m", "-2,3,4.0,881250950\n", "userId", "line 3: '-2'"),
    ],
)
def test_bad_values_name_file_column_and_rows(
    tmp_path: Path, variant: str, body: str, column: str, line: str
):
    path = write(tmp_path, variant, body)
    with pytest.raises(RawDataError) as err:
        read_ratings(variant, tmp_path)
    message = str(err.value)
    assert str(path) in message and f"column '{column}'" in message and line in message


@pytest.mark.parametrize(
    ("variant", "body", "expected"),
    [
        ("ml-100k", "2\t3\t4\t881250950\t9\n", "more '\\t'-separated fields than the 4"),
        ("ml-1m", "2::3::4\n", "fewer '::'-separated fields than the 4"),
        ("ml-1m", "2::3::4::881250950::1\n", "more '::'-separated fields than the 4"),
        ("ml-20m", "2,3,4.0,881250950,x\n", "more ','-separated fields than the 4 of its header"),
    ],
)
def test_lines_with_extra_or_missing_fields_are_named(
    tmp_path: Path, variant: str, body: str, expected: str
):
    """The published files have the same number of fields on every line."""
    path = write(tmp_path, variant, body)
    with pytest.raises(RawDataError) as err:
        read_ratings(variant, tmp_path)
    line = 3 if variant == "ml-20m" else 2
    assert str(path) in str(err.value) and expected in str(err.value), str(err.value)
    assert f"line {line}:" in str(err.value)


def test_bad_gzip_values_name_the_gz_file(tmp_path: Path):
    path = tmp_path / "u.data.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("1\t2\t3\t4\n1\t2\t3\tlate\n")
    with pytest.raises(RawDataError, match=r"u\.data\.gz column 'timestamp'.*line 2: 'late'"):
        read_ratings("ml-100k", tmp_path)


@pytest.mark.parametrize(
    ("variant", "text", "expected"),
    [
        ("ml-20m", "user,movieId,rating,timestamp\n1,2,3,4\n", "lacks column(s) ['userId']"),
        ("ml-1m", "1\t2\t3\t4\n", "'::'-separated"),
        ("ml-100k", "1,2,3,4\n", "'\\t'-separated"),
    ],
)
def test_wrong_layout_is_a_clear_error(tmp_path: Path, variant: str, text: str, expected: str):
    (tmp_path / LAYOUTS[variant][0]).write_text(text)
    with pytest.raises(RawDataError) as err:
        read_ratings(variant, tmp_path)
    assert expected in str(err.value) and LAYOUTS[variant][0] in str(err.value)
