"""User-sequence readers (pairs, lines, MovieLens): exact frames, synthetic round trips, bad input
and the real files of ../shared/data/real (skipped when absent)."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from recsys_pipeline.datasets import RawDataError
from recsys_pipeline.datasets.sequences import HAS_TIMES, read_item_catalog, read_sequences
from recsys_pipeline.synthetic.sequences import (
    SequenceConfig,
    generate_sequences,
    write_lines,
    write_movielens,
    write_pairs,
)

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
SCHEMA = {"UserId": pl.Int64, "ItemId": pl.Int64, "Time": pl.Int64}


def frame(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    if path.suffix == ".gz":
        text = gzip.compress(text)
    path.write_bytes(text)
    return path


# ------------------------------------------------------------------ exact frames, tiny files
def test_pairs_exact_frame_positions_repeats_and_user_order(tmp_path: Path):
    # user 7 comes first in the file; 2's sequence repeats item 5; a tab and double space too
    write(tmp_path / "p.txt", "7 1\n7 2\n2 5\n2  9\n2\t5\n3 4\n")
    expected = frame([(2, 5, 0), (2, 9, 1), (2, 5, 2), (3, 4, 0), (7, 1, 0), (7, 2, 1)])
    assert read_sequences("pairs", tmp_path, "p.txt").equals(expected)


def test_pairs_without_final_newline_and_gzipped(tmp_path: Path):
    write(tmp_path / "p.txt.gz", "1 10\n1 11\n1 12")
    expected = frame([(1, 10, 0), (1, 11, 1), (1, 12, 2)])
    assert read_sequences("pairs", tmp_path, "p.txt").equals(expected)  # finds p.txt.gz


def test_lines_exact_frame(tmp_path: Path):
    write(tmp_path / "l.txt", "3 4 4 9\n1 8\n2 5 6\r\n")
    expected = frame([(1, 8, 0), (2, 5, 0), (2, 6, 1), (3, 4, 0), (3, 4, 1), (3, 9, 2)])
    assert read_sequences("lines", tmp_path, "l.txt").equals(expected)


def test_movielens_stable_tie_break_duplicates_and_min_rating(tmp_path: Path):
    # user 1 rates 30 and 20 in the same second: file order decides (30 first); user 2 rated
    # item 5 twice (kept); the file is not sorted by user or time
    write(
        tmp_path / "u.data",
        "2\t5\t4\t200\n1\t30\t1\t100\n1\t10\t5\t50\n1\t20\t3\t100\n2\t5\t2\t150\n1\t40\t4\t90\n",
    )
    expected = frame(
        [(1, 10, 50), (1, 40, 90), (1, 30, 100), (1, 20, 100), (2, 5, 150), (2, 5, 200)]
    )
    assert read_sequences("movielens", tmp_path, variant="ml-100k").equals(expected)
    high = read_sequences("movielens", tmp_path, "u.data", variant="ml-100k", min_rating=4)
    assert high.equals(frame([(1, 10, 50), (1, 40, 90), (2, 5, 200)]))


def test_movielens_1m_layout_gzipped(tmp_path: Path):
    write(tmp_path / "ratings.dat.gz", "1::3::5::20\n1::2::4::10\n2::2::1::5\n")
    expected = frame([(1, 2, 10), (1, 3, 20), (2, 2, 5)])
    assert read_sequences("movielens", tmp_path, variant="ml-1m").equals(expected)


def test_has_times_flags():
    assert HAS_TIMES == {"pairs": False, "lines": False, "movielens": True}


# ------------------------------------------------------------------ synthetic files, each format
@pytest.fixture(scope="module")
def synthetic() -> pl.DataFrame:
    return generate_sequences(SequenceConfig(n_users=300, n_items=120, seed=5))


@pytest.mark.parametrize(
    ("fmt", "name", "writer"),
    [
        ("pairs", "s.txt", write_pairs),
        ("pairs", "s.txt.gz", write_pairs),
        ("lines", "s.txt", write_lines),
    ],
)
def test_synthetic_text_formats_round_trip(tmp_path, synthetic, fmt, name, writer):
    writer(synthetic, tmp_path / name)
    positions = synthetic.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).over("UserId").alias("Time")
    )
    assert read_sequences(fmt, tmp_path, name.removesuffix(".gz")).equals(positions)


@pytest.mark.parametrize(("variant", "name"), [("ml-100k", "u.data"), ("ml-1m", "ratings.dat.gz")])
def test_synthetic_movielens_round_trip_with_equal_times(tmp_path, synthetic, variant, name):
    assert synthetic.select(pl.struct("UserId", "Time").is_duplicated().any()).item()  # ties
    write_movielens(synthetic, tmp_path / name, variant)
    lines = (gzip.open if name.endswith(".gz") else open)(tmp_path / name, "rt").read().splitlines()
    assert lines[0].split("\t" if variant == "ml-100k" else "::")[0] != "1"  # users interleave
    assert read_sequences("movielens", tmp_path, variant=variant).equals(synthetic)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("fmt", "text", "pattern"),
    [
        (
            "pairs",
            "1 2\n1 x\n2 3\n",
            r"b\.txt line 2 column 2 is not an integer id \('x'.*line 2, column 2: 'x'",
        ),
        ("pairs", "1 2\n1.5 3\n", r"line 2 column 1 is not an integer id \('1\.5'"),
        ("pairs", "1 2\n99999999999999999999 3\n", r"line 2 column 1 is not an integer"),
        ("lines", "1 2 3\n2 4 y 5\n", r"line 2 column 3 is not an integer id \('y'"),
        (
            "pairs",
            "1 2\n1 2 3\n",
            r"line 2 has a wrong number of fields.*exactly 2.*line 2: 3 field",
        ),
        ("pairs", "1 2\n\n1 3\n", r"line 2 has a wrong number of fields.*line 2: 0 field"),
        ("lines", "1 2 3\n2\n", r"line 2 has a wrong number of fields.*at least 2"),
        (
            "pairs",
            "1 2\n2 3\n1 4\n",
            r"line 3 column 1: user 1 appears again.*contiguous.*seen before on line 1",
        ),
        ("lines", "1 2 3\n1 4\n", r"line 2 column 1: user 1 appears again.*exactly one line"),
        ("pairs", "1 2\n1 -3\n", r"line 2 column 2 has a negative id \('-3'"),
        ("lines", "-1 2 3\n", r"line 1 column 1 has a negative id"),
        ("pairs", "", r"raw file is empty"),
        ("lines", " \n\n", r"raw file is empty"),
    ],
)
def test_bad_text_input_names_file_line_and_column(tmp_path, fmt, text, pattern):
    path = write(tmp_path / "b.txt", text)
    with pytest.raises(RawDataError, match=pattern) as err:
        read_sequences(fmt, tmp_path, "b.txt")
    assert str(path) in str(err.value)


def test_non_utf8_and_broken_gzip(tmp_path: Path):
    write(tmp_path / "u.txt", b"1 2\n1 \xff3\n")
    with pytest.raises(RawDataError, match=r"u\.txt line 2 is not valid UTF-8"):
        read_sequences("pairs", tmp_path, "u.txt")
    (tmp_path / "g.txt.gz").write_bytes(gzip.compress(b"1 2\n" * 1000)[:-30])
    with pytest.raises(RawDataError, match=r"g\.txt\.gz is not a complete gzip file"):
        read_sequences("pairs", tmp_path, "g.txt")


def test_missing_file_says_where_to_put_it(tmp_path: Path):
    with pytest.raises(
        RawDataError, match=r"raw file not found: .*Video\.txt \(or Video\.txt\.gz\)"
    ):
        read_sequences("pairs", tmp_path / "video", "Video.txt")


def test_movielens_errors_come_from_the_movielens_reader(tmp_path: Path):
    write(tmp_path / "u.data", "1\t2\t3\t100\n-4\t2\t3\t100\n")
    with pytest.raises(RawDataError, match=r"u\.data column 'userId' has negative.*line 2"):
        read_sequences("movielens", tmp_path, variant="ml-100k")
    write(tmp_path / "u.data", "1\t2\t3\t100\n")
    with pytest.raises(RawDataError, match=r"no rating >= min_rating=4"):
        read_sequences("movielens", tmp_path, variant="ml-100k", min_rating=4)


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown sequence format"):
        read_sequences("csv", tmp_path, "x")
    with pytest.raises(ValueError, match="needs a variant"):
        read_sequences("movielens", tmp_path)
    with pytest.raises(ValueError, match="for format 'movielens'"):
        read_sequences("pairs", tmp_path, "x", min_rating=3)


# ------------------------------------------------------------------ the real files
def counts(df: pl.DataFrame) -> tuple[int, int, int]:
    return df["UserId"].n_unique(), df["ItemId"].n_unique(), df.height


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real data folder {REAL} absent")
@pytest.mark.parametrize(
    ("fmt", "folder", "name", "expected"),
    [
        ("pairs", "amazon_video_games_sasrec", "Video.txt", (31_013, 23_715, 287_107)),
        ("pairs", "amazon_beauty_bert4rec", "beauty.txt", (40_226, 54_542, 353_962)),
        # the S3-Rec files' README table (users = lines)
        ("lines", "amazon_s3rec_iclrec", "Beauty.txt", (22_363, 12_101, 198_502)),
        ("lines", "amazon_s3rec_iclrec", "Sports_and_Outdoors.txt", (35_598, 18_357, 296_337)),
        ("lines", "amazon_s3rec_iclrec", "Toys_and_Games.txt", (19_412, 11_924, 167_597)),
    ],
)
def test_real_text_files_match_their_readme(fmt, folder, name, expected):
    if not (REAL / folder / name).is_file():
        pytest.skip(f"{REAL / folder / name} absent")
    df = read_sequences(fmt, REAL / folder, name)
    assert counts(df) == expected
    assert df.group_by("UserId").len()["len"].min() >= (
        5 if folder != "amazon_video_games_sasrec" else 1
    )


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real data folder {REAL} absent")
@pytest.mark.parametrize(
    ("folder", "variant", "expected"),
    [
        ("movielens_100k", "ml-100k", (943, 1_682, 100_000)),
        ("movielens_1m_partial", "ml-1m", (2_999, 3_615, 487_650)),
    ],
)
def test_real_movielens_files(folder, variant, expected):
    if not (REAL / folder).is_dir():
        pytest.skip(f"{REAL / folder} absent")
    df = read_sequences("movielens", REAL / folder, variant=variant)
    assert counts(df) == expected
    # chronological per user
    assert df.select((pl.col("Time").diff().over("UserId").fill_null(0) >= 0).all()).item()


# ---- item catalogue -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("movies.dat", "1::Toy Story (1995)::Animation\n3::Heat (1995)::Action\n2::X::Y\n"),
        ("u.item", "1|Caf\xe9 (1995)|01-Jan-1995||\n2|B|x\n3|C|x"),  # latin-1, no final newline
        ("movies.csv", 'movieId,title,genres\n3,A,b\n1,"B, The",c\n2,C,d\n'),
        ("items.txt", "3\n\n1\n2\n"),  # a plain list; blank lines skipped
        ("items.tsv", "1\tx\n2\ty\r\n3\tz\r\n"),
    ],
)
def test_item_catalogue_formats(tmp_path, name, content):
    (tmp_path / name).write_bytes(content.encode("latin-1"))
    frame = read_item_catalog(tmp_path, name)
    assert frame.schema == {"ItemId": pl.Int64}
    assert frame.get_column("ItemId").to_list() == [1, 2, 3]


def test_item_catalogue_gzip_and_errors(tmp_path):
    with gzip.open(tmp_path / "movies.dat.gz", "wb") as handle:
        handle.write(b"7::A::B\n5::C::D\n")
    assert read_item_catalog(tmp_path, "movies.dat").get_column("ItemId").to_list() == [5, 7]
    with pytest.raises(RawDataError, match=r"raw file not found: .*u\.item"):
        read_item_catalog(tmp_path, "u.item")
    (tmp_path / "bad.dat").write_text("1::A\n2::B\nx3::C\n-4::D\n5.5\n")
    with pytest.raises(
        RawDataError,
        match=r"bad\.dat line 3, column 1 has no integer item id.*\(3 line\(s\) affected\); "
        r"first offending rows: line 3: 'x3::C'; line 4: '-4::D'; line 5: '5.5'",
    ):
        read_item_catalog(tmp_path, "bad.dat")
    (tmp_path / "twice.txt").write_text("1\n2\n1\n")
    with pytest.raises(RawDataError, match=r"twice\.txt column 1 lists an id twice .*line 1: 1"):
        read_item_catalog(tmp_path, "twice.txt")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(RawDataError, match="has no lines"):
        read_item_catalog(tmp_path, "blank.txt")


def test_real_movies_dat_holds_every_rated_movie():
    folder = REAL / "movielens_1m_partial"
    if not (folder / "movies.dat").is_file():
        pytest.skip(f"{folder / 'movies.dat'} absent")
    catalogue = read_item_catalog(folder, "movies.dat").get_column("ItemId")
    rated = read_sequences("movielens", folder, variant="ml-1m").get_column("ItemId").unique()
    assert catalogue.len() == 3883  # ml-1m's README: 3,883 movies (3,952 ids)
    assert rated.is_in(catalogue.implode()).all() and rated.len() < catalogue.len()
