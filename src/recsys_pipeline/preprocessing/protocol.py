"""The GRU4Rec data protocol as plain functions on polars frames (no Kedro).

Written from ``shared/spec/preprocessing.md`` (the protocol of Hidasi & Czapp, RecSys 2023, and the
older RSC15 protocol of the Theano GRU4Rec repository). Every function takes and returns a
``pl.DataFrame``; frames with the output columns ``SessionId``, ``ItemId`` and ``Time`` are called
*session frames* below. Column dtypes: ``SessionId`` Int64, ``ItemId`` Int64, ``Time`` Int64 (epoch
seconds or milliseconds, per dataset; Float64 seconds for RSC15).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

SESSION, ITEM, TIME = "SessionId", "ItemId", "Time"
OUTPUT_COLUMNS = (SESSION, ITEM, TIME)
DAY_SECONDS = 86_400


def first_appearance_index(df: pl.DataFrame, columns: dict[str, str]) -> pl.LazyFrame:
    """Add, per ``column: name``, ``name`` (UInt32): the value's rank in order of first appearance.

    Ranks are 0, 1, ... in ``df``'s row order; nulls count as one value, as pandas' ``unique()``
    does in the reference scripts. Every map is computed eagerly from ``df`` itself (small:
    one row per distinct value) and then joined lazily, so neither a later filter nor the row
    order of an earlier join can change a rank. The result's row order is not kept: the
    protocol sorts afterwards anyway.
    """
    if not isinstance(df, pl.DataFrame):
        raise TypeError("first_appearance_index needs the eager frame in its original row order")
    maps = {
        column: df.select(column).unique(maintain_order=True).with_row_index(name)
        for column, name in columns.items()
    }
    lf = df.lazy()
    for column, mapping in maps.items():
        lf = lf.join(mapping.lazy(), on=column, how="left", nulls_equal=True)
    return lf


def _bits(span: int) -> int:
    return max(int(span).bit_length(), 1)


def sort_rows(df: pl.DataFrame, major: str, time: str, minor: str) -> pl.DataFrame:
    """Sort by (``major``, ``time``, ``minor``), all integer columns.

    When the three value ranges fit in 64 bits together, the sort runs on one packed UInt64 key
    (about 2.5x faster than polars' multi-column sort on 20M rows); otherwise on the columns.
    Equal keys are whole-row duplicates of the sort key, so stability does not matter.
    """
    cols = (major, time, minor)
    if df.height == 0 or not all(df.schema[c].is_integer() for c in cols):
        return df.sort(list(cols), maintain_order=True)
    lo = df.select(pl.col(c).min() for c in cols).row(0)
    hi = df.select(pl.col(c).max() for c in cols).row(0)
    widths = [_bits(h - low) for low, h in zip(lo, hi, strict=True)]
    if sum(widths) > 64:
        return df.sort(list(cols), maintain_order=True)
    packed = pl.lit(0, dtype=pl.UInt64)
    for column, low, width in zip(cols, lo, widths, strict=True):
        packed = packed * (1 << width) + (pl.col(column) - low).cast(pl.UInt64)
    order = df.select(packed.arg_sort()).to_series()
    return df[order]


def gap_sessions(
    df: pl.DataFrame, key: str, time: str, minor: str, gap: int | float
) -> pl.DataFrame:
    """Cut ``key``'s time-ordered stream into sessions; adds ``SessionId`` (0, 1, ... in sort order).

    Rows are sorted by (``key``, ``time``, ``minor``). A new session starts when ``key`` changes
    or when the gap to the previous row is *strictly* greater than ``gap``. The result is already
    in (SessionId, Time, minor) order.
    """
    df = sort_rows(df, key, time, minor)
    new = (pl.col(key) != pl.col(key).shift(1)) | ((pl.col(time) - pl.col(time).shift(1)) > gap)
    return df.with_columns(new.fill_null(False).cast(pl.Int64).cum_sum().alias(SESSION))


def filter_events(events: pl.DataFrame) -> pl.DataFrame:
    """Keep the item-view events (``kept``) of a standard frame (no copy when all are kept)."""
    return events if events.get_column("kept").all() else events.filter(pl.col("kept"))


def sessionise(
    events: pl.DataFrame, mode: str = "gap", gap_on: str = "kept", gap: int | float = 3600
) -> pl.DataFrame:
    """Standard frame -> kept events with ``SessionId``, in (SessionId, Time, sort_item) order.

    ``mode="given"``: the key is the session id. ``mode="gap"``: sessions are cut from the key's
    stream by :func:`gap_sessions`, with the gap measured on the kept events only
    (``gap_on="kept"``, Rees46) or on all events before the view filter (``gap_on="all"``,
    Coveo, RetailRocket). Output columns: SessionId, ItemId, Time, sort_item.
    """
    if mode not in ("given", "gap") or gap_on not in ("kept", "all"):
        raise ValueError(f"session mode must be given|gap and gap_on kept|all, got {mode}/{gap_on}")
    if mode == "given":
        df = filter_events(events).rename({"key": SESSION})
        df = sort_rows(df.with_columns(pl.col(SESSION).cast(pl.Int64)), SESSION, TIME, "sort_item")
    else:
        df = filter_events(events) if gap_on == "kept" else events
        df = filter_events(gap_sessions(df, "key", TIME, "sort_item", gap))
    return df.select(SESSION, ITEM, TIME, "sort_item")


def remove_consecutive_duplicates(df: pl.DataFrame) -> pl.DataFrame:
    """Drop a row whose previous row has the same session and the same item (one pass only).

    ``i i j -> i j``; ``i j i`` stays. ``df`` must already be in protocol order.
    """
    dup = (pl.col(SESSION) == pl.col(SESSION).shift(1)) & (pl.col(ITEM) == pl.col(ITEM).shift(1))
    return df.filter(~dup.fill_null(False)).select(OUTPUT_COLUMNS)


@dataclass
class FilterTrace:
    """Rows after every step of a filter; sessions and items before and after it."""

    steps: list[dict] = field(default_factory=list)

    def add(self, step: str, events: int, sessions: int | None = None, items: int | None = None):
        """Record the counts after ``step`` (sessions and items where they were counted)."""
        entry = {"step": step, "events": int(events)}
        if sessions is not None:
            entry |= {"sessions": int(sessions), "items": int(items)}
        self.steps.append(entry)
        logger.debug("%-28s %12d events", step, events)  # the whole trace: filter_trace.json

    def add_frame(self, step: str, df: pl.DataFrame) -> None:
        """Record ``df``'s events, sessions and items."""
        counts = df.select(pl.col(SESSION).n_unique(), pl.col(ITEM).n_unique()).row(0)
        self.add(step, df.height, *counts)


def _dense_codes(df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Dense session codes (rows must be grouped by session) and dense item codes, as numpy."""
    items = df.select(pl.col(ITEM).unique()).with_row_index("code")
    codes = df.select(SESSION, ITEM).with_columns(pl.col(SESSION).rle_id().alias("session"))
    codes = codes.join(items, on=ITEM, how="left", maintain_order="left")
    return codes["session"].to_numpy(), codes["code"].to_numpy()


def iterative_support_filter(
    df: pl.DataFrame, min_item_support: int = 5, min_session_length: int = 2
) -> tuple[pl.DataFrame, FilterTrace]:
    """Repeat (drop sessions of length 1; drop items with < ``min_item_support`` events) until stable.

    The loop ends when one whole pass leaves the row count unchanged, so both conditions hold at
    exit. Step a removes sessions shorter than ``min_session_length`` (2 in the protocol, i.e.
    exactly the length-1 sessions). ``df``'s rows must be grouped by session (protocol order);
    row order is preserved. Counts are kept up to date incrementally (numpy ``bincount`` of the
    removed rows), so passes after the first cost one gather each.
    """
    trace = FilterTrace()
    if df.height == 0:
        trace.add("dedup", 0, 0, 0)
        return df, trace
    session, item = _dense_codes(df)
    lengths = np.bincount(session)
    support = np.bincount(item)
    trace.add("dedup", df.height, lengths.size, support.size)
    alive = np.ones(df.height, dtype=bool)
    n_pass, previous, current = 0, -1, df.height

    def drop(mask: np.ndarray) -> int:
        rows = np.flatnonzero(mask & alive)
        alive[rows] = False
        lengths[:] -= np.bincount(session[rows], minlength=lengths.size)
        support[:] -= np.bincount(item[rows], minlength=support.size)
        return rows.size

    while current != previous:
        previous = current
        n_pass += 1
        current -= drop(lengths[session] < min_session_length)
        trace.add(f"pass {n_pass}: session length", current)
        current -= drop(support[item] < min_item_support)
        trace.add(f"pass {n_pass}: item support", current)
    full = df.filter(pl.Series(alive))
    trace.add("full", full.height, np.count_nonzero(lengths), np.count_nonzero(support))
    return full, trace


def _grouped(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` flagged as sorted by SessionId when it is, so windows over sessions run fast."""
    return df.set_sorted(SESSION) if df.get_column(SESSION).is_sorted() else df


def time_split(
    data: pl.DataFrame, cut: int | float, min_session_length: int = 2
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``data`` at ``cut`` by the protocol's rule; returns (train, test).

    ``test`` = every row of the sessions whose first event is ``>= cut``; it is neither length-
    nor item-filtered. ``train`` = rows with ``Time < cut`` (so sessions crossing the cut are
    truncated), then sessions shorter than ``min_session_length`` dropped.

    The reference takes session starts from the full filtered data also when it splits
    train_full at the validation cut; taking them from ``data`` is the same, because a session
    in train_full starts before the test cut and so keeps its first event there.
    """
    data = _grouped(data)
    test = data.filter(pl.col(TIME).min().over(SESSION) >= cut)
    train = _grouped(data.filter(pl.col(TIME) < cut))
    train = train.filter(pl.len().over(SESSION) >= min_session_length)
    return train, test


@dataclass(frozen=True)
class SplitPoints:
    """Where the protocol cut the data: ``tsplit`` and the test/validation cuts, in data units."""

    tsplit: int | float
    cut_test: int | float
    cut_valid: int | float


def split_points(
    full: pl.DataFrame, n_test_days: int, time_unit_seconds: float, fixed_tsplit: int | None
) -> SplitPoints:
    """``tsplit`` is ``fixed_tsplit`` or the last timestamp; cuts are N and 2N days before it."""
    tsplit = fixed_tsplit if fixed_tsplit is not None else full.get_column(TIME).max()
    if tsplit is None:
        raise ValueError("cannot split an empty dataset: no event survived the filters")
    day = round(DAY_SECONDS / time_unit_seconds)
    return SplitPoints(tsplit, tsplit - n_test_days * day, tsplit - 2 * n_test_days * day)


def protocol_splits(
    full: pl.DataFrame, points: SplitPoints, min_session_length: int = 2
) -> dict[str, pl.DataFrame]:
    """train_full/test at ``cut_test``, then train_tr/train_valid inside train_full at ``cut_valid``."""
    train_full, test = time_split(full, points.cut_test, min_session_length)
    train_tr, train_valid = time_split(train_full, points.cut_valid, min_session_length)
    return {
        "train_full": train_full,
        "test": test,
        "train_tr": train_tr,
        "train_valid": train_valid,
    }


# ------------------------------------------------------------------------------------------------
# The older RSC15 protocol (Theano repository, examples/rsc15/preprocess.py), section 4 of the spec.


def rsc15_filter(
    df: pl.DataFrame, min_item_support: int = 5, min_session_length: int = 2
) -> tuple[pl.DataFrame, FilterTrace]:
    """One pass, no dedup: drop length-1 sessions, items with < 5 events, sessions shorter than 2."""
    trace = FilterTrace()
    trace.add_frame("raw clicks", df)
    df = df.filter(pl.len().over(SESSION) > 1)
    trace.add("session length > 1", df.height)
    df = df.filter(pl.len().over(ITEM) >= min_item_support)
    trace.add("item support", df.height)
    df = df.filter(pl.len().over(SESSION) >= min_session_length)
    trace.add_frame("full", df)
    return df, trace


def _rsc15_split(data: pl.DataFrame, n_days: int, min_session_length: int):
    """Sessions ending before ``max - n_days`` are train; the rest, restricted to train items, test."""
    tmax = data.get_column(TIME).max()
    cut = tmax - n_days * DAY_SECONDS
    ends = data.group_by(SESSION).agg(pl.col(TIME).max().alias("end"))
    early = ends.filter(pl.col("end") < cut).select(SESSION)
    train = data.join(early, on=SESSION, how="semi", maintain_order="left")
    test = data.join(early, on=SESSION, how="anti", maintain_order="left")
    test = test.join(train.select(ITEM).unique(), on=ITEM, how="semi", maintain_order="left")
    test = test.filter(pl.len().over(SESSION) >= min_session_length)
    return train, test, cut


def rsc15_splits(
    full: pl.DataFrame, n_test_days: int = 1, min_session_length: int = 2
) -> tuple[dict[str, pl.DataFrame], dict[str, float]]:
    """train_full/test by session end time, then train_tr/train_valid the same way inside train."""
    train_full, test, cut_test = _rsc15_split(full, n_test_days, min_session_length)
    train_tr, train_valid, cut_valid = _rsc15_split(train_full, n_test_days, min_session_length)
    splits = {
        "train_full": train_full,
        "test": test,
        "train_tr": train_tr,
        "train_valid": train_valid,
    }
    return splits, {"cut_test_end_time": cut_test, "cut_valid_end_time": cut_valid}


# ------------------------------------------------------------------------------------------------


def iso_utc(time: float, time_unit_seconds: float) -> str:
    """A timestamp in the dataset's unit as ISO 8601 UTC with milliseconds."""
    return (
        pl.Series([int(time * time_unit_seconds * 1000)])
        .cast(pl.Datetime("ms", "UTC"))
        .dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ")
        .item()
    )


def frame_stats(df: pl.DataFrame, time_unit_seconds: float) -> dict:
    """Events, sessions, items, time range (raw and ISO UTC) and session-length summary."""
    if df.height == 0:
        return {"events": 0, "sessions": 0, "items": 0}
    row = df.select(
        pl.len().alias("events"),
        pl.col(SESSION).n_unique().alias("sessions"),
        pl.col(ITEM).n_unique().alias("items"),
        pl.col(TIME).min().alias("time_min"),
        pl.col(TIME).max().alias("time_max"),
    ).row(0, named=True)
    lengths = df.group_by(SESSION).len().get_column("len")
    return {
        **{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
        "start_utc": iso_utc(row["time_min"], time_unit_seconds),
        "end_utc": iso_utc(row["time_max"], time_unit_seconds),
        "days": (row["time_max"] - row["time_min"]) * time_unit_seconds / DAY_SECONDS,
        "session_length_min": int(lengths.min()),
        "session_length_max": int(lengths.max()),
        "session_length_mean": float(lengths.mean()),
        "targets": int(row["events"] - row["sessions"]),
    }


@dataclass(frozen=True)
class ProtocolConfig:
    """Per-dataset protocol settings (``conf/base/parameters_preprocess.yml``)."""

    protocol: str = "hidasi2023"  # or "rsc15" (the older Theano-repository protocol)
    session_mode: str = "given"  # given | gap
    gap_on: str = "kept"  # kept | all
    gap: int | float = 3600  # in time units; strictly greater starts a new session
    time_unit_seconds: float = 1.0
    n_test_days: int = 1
    fixed_tsplit: int | None = None
    min_item_support: int = 5
    min_session_length: int = 2
    min_split_sessions: int = 1  # fewer sessions in any split is an error (check_split_sizes)


class EmptySplitError(ValueError):
    """A split holds fewer sessions than the protocol's minimum (``min_split_sessions``)."""


def check_split_sizes(
    full: pl.DataFrame,
    splits: dict[str, pl.DataFrame],
    cuts: dict[str, Any],
    config: ProtocolConfig,
    dataset: str,
) -> None:
    """Fail when the data left for any split is below ``config.min_split_sessions`` sessions
    (before anything of the split is written): the message names the dataset, the split, its
    cut time and what to change.

    Raises:
        EmptySplitError: with every split that is too small.
    """
    minimum = max(1, config.min_split_sessions)
    unit = config.time_unit_seconds

    def when(key: str) -> str:
        value = cuts.get(key)
        return "?" if value is None else f"{iso_utc(value, unit)} ({value})"

    if config.protocol == "rsc15":
        rules = {
            "train_full": f"sessions ending before {when('cut_test_end_time')}",
            "test": f"sessions ending at or after {when('cut_test_end_time')}, train items only",
            "train_tr": f"train_full sessions ending before {when('cut_valid_end_time')}",
            "train_valid": f"train_full sessions ending at or after "
            f"{when('cut_valid_end_time')}, train_tr items only",
        }
    else:
        rules = {
            "train_full": f"events before the test cut {when('cut_test')}",
            "test": f"sessions starting at or after the test cut {when('cut_test')}",
            "train_tr": f"events before the validation cut {when('cut_valid')}",
            "train_valid": f"train_full sessions starting at or after the validation cut "
            f"{when('cut_valid')}",
        }
    small = []
    for name, frame in splits.items():
        n = frame.get_column(SESSION).n_unique() if frame.height else 0
        if n < minimum:
            small.append(f"'{name}' has {n} sessions ({rules.get(name, name)})")
    if not small:
        return
    stats = frame_stats(full, unit)
    span = (
        f"The filtered data holds {stats['events']} events in {stats['sessions']} sessions, "
        f"{stats['start_utc']} .. {stats['end_utc']}"
        if stats["events"]
        else "No event survived the filters"
    )
    tsplit = (
        f"fixed_tsplit={config.fixed_tsplit} ({iso_utc(config.fixed_tsplit, unit)})"
        if config.fixed_tsplit is not None
        else "fixed_tsplit=null (the last timestamp)"
    )
    raise EmptySplitError(
        f"dataset {dataset!r}: " + "; ".join(small) + f"; at least {minimum} needed "
        f"(min_split_sessions). {span}. Change preprocess.{dataset}: {tsplit}, "
        f"n_test_days={config.n_test_days}, min_item_support={config.min_item_support}, "
        f"min_session_length={config.min_session_length}, or add data."
    )


@dataclass
class ProtocolResult:
    """Everything the protocol produces for one dataset."""

    full: pl.DataFrame
    splits: dict[str, pl.DataFrame]
    trace: FilterTrace
    cuts: dict[str, float]


def run_protocol(
    events: pl.DataFrame, config: ProtocolConfig, dataset: str = "?"
) -> ProtocolResult:
    """Standard frame (``datasets.read_events``) -> full data, the four splits and the trace.

    The same steps the Kedro nodes run one by one, chained for scripts and benchmarks.
    """
    if config.protocol == "rsc15":
        clicks = events.rename({"key": SESSION}).select(OUTPUT_COLUMNS)
        full, trace = rsc15_filter(clicks, config.min_item_support, config.min_session_length)
        splits, cuts = rsc15_splits(full, config.n_test_days, config.min_session_length)
        check_split_sizes(full, splits, cuts, config, dataset)
        return ProtocolResult(full, splits, trace, cuts)
    df = sessionise(events, config.session_mode, config.gap_on, config.gap)
    df = remove_consecutive_duplicates(df)
    full, trace = iterative_support_filter(df, config.min_item_support, config.min_session_length)
    if full.height == 0:
        check_split_sizes(full, {"train_full": full}, {}, config, dataset)
    points = split_points(full, config.n_test_days, config.time_unit_seconds, config.fixed_tsplit)
    splits = protocol_splits(full, points, config.min_session_length)
    cuts = {"tsplit": points.tsplit, "cut_test": points.cut_test, "cut_valid": points.cut_valid}
    check_split_sizes(full, splits, cuts, config, dataset)
    return ProtocolResult(full, splits, trace, cuts)
