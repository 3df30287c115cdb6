"""A plain pandas implementation of the Rees46 preprocessing protocol (benchmark baseline).

Written the way a typical user would write it with pandas (>= 3): read both monthly CSVs whole,
parse the times, rank the ids, sort, then the protocol steps of ``shared/spec/preprocessing.md``
one after the other on in-memory frames. It is independent of ``recsys_pipeline`` on purpose, so
that ``preprocess_rees46.py`` can cross-check the two implementations row by row.

Protocol (Rees46, Hidasi & Czapp 2023):

1. ``2019-Oct.csv`` then ``2019-Nov.csv``; columns event_time, event_type, product_id, user_id.
2. Time = UTC epoch seconds; user and product ids -> integers in order of first appearance over
   all rows of both months (every event type).
3. Sort by (user, time, product index); keep the views.
4. User-based sessions: a new session when the user changes or the gap to the previous view of
   the same user is strictly greater than 3600 s. SessionId = running counter from 0.
5. Drop an event whose previous row has the same session and the same item (once).
6. Repeat until the row count stops changing: drop length-1 sessions, then items with < 5 events.
7. Fixed tsplit 1575158400 (2019-12-01 UTC), 1 test day: test = every event of the sessions whose
   first event is at/after the cut; train_full = events before the cut, length-1 sessions dropped.
8. The same inside train_full two days before tsplit (session starts from the full data):
   train_valid and train_tr.

Usage::

    python benchmarks/pandas_baseline.py --data-dir DIR --out-dir OUT [--json TIMINGS.json]

Writes ``full``, ``train_full``, ``test``, ``train_tr``, ``train_valid`` as parquet (columns
SessionId, ItemId = original product_id, Time; all int64) to ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import pandas as pd

FILES = ("2019-Oct.csv", "2019-Nov.csv")
COLUMNS = ["event_time", "event_type", "product_id", "user_id"]
GAP = 3600
TSPLIT = 1575158400
N_TEST_DAYS = 1
DAY = 86400
MIN_ITEM_SUPPORT = 5


def find_file(directory: Path, name: str) -> Path:
    """``name`` or ``name.gz`` in ``directory`` (pandas decompresses by suffix)."""
    for path in (directory / name, directory / f"{name}.gz"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{directory / name} (or .gz) not found")


def load(directory: Path) -> pd.DataFrame:
    """Both months, October first, with integer time / user / item columns."""
    parts = [pd.read_csv(find_file(directory, name), usecols=COLUMNS) for name in FILES]
    data = pd.concat(parts, ignore_index=True)
    del parts
    times = pd.to_datetime(data["event_time"], format="%Y-%m-%d %H:%M:%S UTC", utc=True)
    # pandas 3 may parse to s/us resolution: never assume nanoseconds.
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    data["time"] = ((times - epoch) // pd.Timedelta(1, "s")).astype("int64")
    data = data.drop(columns="event_time")
    # factorize numbers the values in order of first appearance, over every event type.
    data["user_idx"] = pd.factorize(data["user_id"])[0]
    data["item_idx"] = pd.factorize(data["product_id"])[0]
    return data


def sessions_and_dedup(data: pd.DataFrame) -> pd.DataFrame:
    """Views in (user, time, item) order, 1-hour gap sessions, consecutive duplicates removed."""
    data = data.sort_values(["user_idx", "time", "item_idx"], kind="stable")
    view = data[data["event_type"] == "view"].reset_index(drop=True)
    new_user = view["user_idx"].ne(view["user_idx"].shift())
    long_gap = view["time"].diff() > GAP
    # The first row starts a new user, so the counter starts at 0 after the - 1.
    view["SessionId"] = (new_user | long_gap).cumsum() - 1
    same_session = view["SessionId"].eq(view["SessionId"].shift())
    same_item = view["item_idx"].eq(view["item_idx"].shift())
    view = view[~(same_session & same_item)]
    return view[["SessionId", "product_id", "time"]].rename(
        columns={"product_id": "ItemId", "time": "Time"}
    )


def support_filter(df: pd.DataFrame) -> pd.DataFrame:
    """Drop length-1 sessions, then items with < 5 events, until nothing changes."""
    previous = -1
    while len(df) != previous:
        previous = len(df)
        session_length = df.groupby("SessionId")["SessionId"].transform("size")
        df = df[session_length > 1]
        item_support = df.groupby("ItemId")["ItemId"].transform("size")
        df = df[item_support >= MIN_ITEM_SUPPORT]
    return df


def split(data: pd.DataFrame, starts: pd.Series, cut: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): test = sessions starting at/after ``cut``; train = before it, length > 1."""
    late_sessions = starts.index[starts >= cut]
    test = data[data["SessionId"].isin(late_sessions)]
    train = data[data["Time"] < cut]
    lengths = train.groupby("SessionId")["SessionId"].transform("size")
    return train[lengths > 1], test


def preprocess(directory: Path) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """The five output frames and the wall seconds of each phase."""
    timings = {}
    t0 = time.perf_counter()
    data = load(directory)
    timings["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    df = sessions_and_dedup(data)
    del data
    full = support_filter(df)
    del df
    starts = full.groupby("SessionId")["Time"].min()
    cut_test = TSPLIT - N_TEST_DAYS * DAY
    cut_valid = TSPLIT - 2 * N_TEST_DAYS * DAY
    train_full, test = split(full, starts, cut_test)
    train_tr, train_valid = split(train_full, starts, cut_valid)
    timings["protocol"] = time.perf_counter() - t0
    frames = {
        "full": full,
        "train_full": train_full,
        "test": test,
        "train_tr": train_tr,
        "train_valid": train_valid,
    }
    return frames, timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with the raw CSVs")
    parser.add_argument("--out-dir", type=Path, required=True, help="where the parquet files go")
    parser.add_argument("--json", type=Path, help="write timings and counts here")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    frames, timings = preprocess(args.data_dir)
    t0 = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.astype("int64").to_parquet(args.out_dir / f"{name}.parquet", index=False)
    timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start

    report = {
        "implementation": "pandas",
        "pandas_version": pd.__version__,
        "timings_s": timings,
        "rows": {name: len(frame) for name, frame in frames.items()},
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
