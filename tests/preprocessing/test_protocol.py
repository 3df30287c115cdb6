"""Each protocol step on hand-made inputs, with expected outputs written by hand."""

from __future__ import annotations

import polars as pl
import pytest

from recsys_pipeline.preprocessing import protocol as P


def frame(rows: list[tuple], columns=("SessionId", "ItemId", "Time")) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=list(columns), orient="row")


def standard(rows: list[tuple]) -> pl.DataFrame:
    """key, ItemId, sort_item(=ItemId), Time, kept."""
    return pl.DataFrame(
        [(k, i, i, t, kept) for k, i, t, kept in rows],
        schema=["key", "ItemId", "sort_item", "Time", "kept"],
        orient="row",
    )


def rows(df: pl.DataFrame) -> list[tuple]:
    return [tuple(r) for r in df.select("SessionId", "ItemId", "Time").iter_rows()]


def test_dedup_drops_immediate_repeats_only_and_keeps_i_j_i():
    df = frame([(1, 10, 1), (1, 10, 2), (1, 20, 3), (1, 10, 4), (2, 10, 5), (2, 10, 6)])
    assert rows(P.remove_consecutive_duplicates(df)) == [
        (1, 10, 1),
        (1, 20, 3),
        (1, 10, 4),
        (2, 10, 5),
    ]


def test_dedup_does_not_merge_across_sessions():
    df = frame([(1, 10, 1), (2, 10, 2)])
    assert P.remove_consecutive_duplicates(df).height == 2


def test_filter_needs_several_passes():
    # A1..A4: (1 2); B: (1 7); C1..C3: (7 2); D: (7); E1..E5: (3 4).
    # pass 1: D (length 1) goes -> item 7 has 4 events -> its events go -> B, C* become length 1;
    # pass 2: B, C* go -> items 1 and 2 have 4 events each -> they go; pass 3 changes nothing.
    data, t = [], 0
    sessions = [[1, 2]] * 4 + [[1, 7]] + [[7, 2]] * 3 + [[7]] + [[3, 4]] * 5
    for sid, items in enumerate(sessions):
        for item in items:
            data.append((sid, item, t))
            t += 1
    full, trace = P.iterative_support_filter(frame(data))
    passes = [s["step"] for s in trace.steps]
    assert passes[-2:] == ["pass 3: item support", "full"] and len(passes) == 8
    assert [s["events"] for s in trace.steps] == [27, 26, 22, 18, 10, 10, 10, 10]
    assert (trace.steps[0]["sessions"], trace.steps[-1]["sessions"]) == (14, 5)
    assert set(full["ItemId"]) == {3, 4} and full["SessionId"].n_unique() == 5


def test_iterative_filter_keeps_adjacent_repeats_after_middle_removed():
    # session 1: a b a ; item b is rare -> removed -> a a stays (no second dedup pass)
    data = [(1, 1, 1), (1, 99, 2), (1, 1, 3)] + [(s, 1, 10 + s) for s in range(2, 4)]
    data += [(s, 1, 20 + s) for s in range(2, 4)]
    df = (
        P.sort_by_protocol(frame(data))
        if hasattr(P, "sort_by_protocol")
        else frame(data).sort(["SessionId", "Time"])
    )
    full, _ = P.iterative_support_filter(df, min_item_support=5)
    assert rows(full.filter(pl.col("SessionId") == 1)) == [(1, 1, 1), (1, 1, 3)]


def test_gap_of_exactly_one_hour_keeps_the_session_and_one_second_more_cuts():
    ev = standard([(7, 1, 0, True), (7, 2, 3600, True), (7, 3, 7201, True), (8, 4, 7202, True)])
    out = P.sessionise(ev, mode="gap", gap_on="kept", gap=3600)
    assert out["SessionId"].to_list() == [0, 0, 1, 2]


def test_gap_on_all_events_versus_kept_events():
    # a cart event at 3000 bridges two views 6000 s apart only when the gap is measured on all events
    ev = standard([(1, 10, 0, True), (1, 11, 3000, False), (1, 12, 6000, True)])
    on_all = P.sessionise(ev, mode="gap", gap_on="all", gap=3600)
    on_kept = P.sessionise(ev, mode="gap", gap_on="kept", gap=3600)
    assert on_all["SessionId"].to_list() == [0, 0]
    assert on_kept["SessionId"].to_list() == [0, 1]
    assert on_all["ItemId"].to_list() == [10, 12]


def test_sessionise_sorts_by_session_time_then_tiebreak_item():
    ev = standard([(5, 30, 100, True), (5, 10, 100, True), (5, 20, 50, True)])
    out = P.sessionise(ev, mode="given")
    assert rows(out) == [(5, 20, 50), (5, 10, 100), (5, 30, 100)]


def test_tie_break_uses_sort_item_not_item_id():
    # Rees46: ties of equal timestamps are broken by first-appearance rank, not by product_id
    ev = pl.DataFrame(
        {
            "key": [0, 0],
            "ItemId": [500, 100],
            "sort_item": [0, 1],
            "Time": [9, 9],
            "kept": [True, True],
        }
    )
    assert P.sessionise(ev, mode="gap")["ItemId"].to_list() == [500, 100]


def test_first_appearance_index_counts_null_as_a_value():
    df = pl.DataFrame({"h": ["b", None, "a", "b", None]})
    out = P.first_appearance_index(df, {"h": "idx"}).collect()
    assert sorted(out.iter_rows(), key=lambda r: r[1]) == [
        ("b", 0),
        ("b", 0),
        (None, 1),
        (None, 1),
        ("a", 2),
    ]


def test_time_split_start_rule_is_inclusive_and_crossing_sessions_are_truncated():
    cut = 100
    full = frame(
        [
            (1, 1, 10),
            (1, 2, 20),  # before the cut: train
            (2, 1, 90),
            (2, 2, 99),
            (2, 3, 100),
            (2, 4, 120),  # crosses: 90, 99 in train; rest nowhere
            (3, 1, 100),
            (3, 2, 110),  # starts exactly at the cut: test
            (4, 1, 95),
            (4, 2, 130),  # crosses with one early event: dropped from train (length 1)
        ]
    )
    train, test = P.time_split(full, cut)
    assert rows(train) == [(1, 1, 10), (1, 2, 20), (2, 1, 90), (2, 2, 99)]
    assert rows(test) == [(3, 1, 100), (3, 2, 110)]


def test_test_is_not_filtered_for_length_or_unknown_items():
    full = frame([(1, 1, 1), (1, 2, 2), (2, 3, 200)])  # session 2: one event of an unseen item
    train, test = P.time_split(full, 100)
    assert rows(test) == [(2, 3, 200)]


def test_protocol_splits_use_2n_days_and_starts_from_full():
    day = P.DAY_SECONDS
    full = frame(
        [
            (1, 1, 0),
            (1, 2, 10),
            (2, 1, 8 * day),
            (2, 2, 8 * day + 5),  # valid window [8d, 9d)
            (3, 1, 9 * day + 1),
            (3, 2, 9 * day + 2),  # test window [9d, 10d]
            (4, 1, 10 * day),
            (4, 2, 10 * day),  # last timestamp = tsplit
        ]
    )
    points = P.split_points(full, n_test_days=1, time_unit_seconds=1, fixed_tsplit=None)
    assert (points.tsplit, points.cut_test, points.cut_valid) == (10 * day, 9 * day, 8 * day)
    s = P.protocol_splits(full, points)
    assert set(s["test"]["SessionId"]) == {3, 4}
    assert set(s["train_full"]["SessionId"]) == {1, 2}
    assert set(s["train_valid"]["SessionId"]) == {2}
    assert set(s["train_tr"]["SessionId"]) == {1}


def test_fixed_tsplit_in_milliseconds():
    full = frame([(1, 1, 0), (1, 2, 1)])
    points = P.split_points(full, 7, 0.001, 1442545200000)
    assert points.cut_test == 1442545200000 - 7 * 86_400_000
    assert points.cut_valid == 1442545200000 - 14 * 86_400_000


def test_rsc15_protocol_splits_by_session_end_and_filters_test_items():
    day = P.DAY_SECONDS
    data = frame(
        [
            (1, 1, 0.0),
            (1, 2, 5.0),
            (2, 1, 2 * day - 10.0),
            (2, 3, 2 * day + 10.0),  # ends after max-1d -> test
            (3, 1, 3 * day - 1.0),
            (3, 2, 3 * day),  # test
        ]
    )
    splits, cuts = P.rsc15_splits(data, n_test_days=1)
    assert cuts["cut_test_end_time"] == 2 * day
    assert set(splits["train_full"]["SessionId"]) == {1}
    # item 3 is unknown to train: session 2 keeps one event -> dropped; session 3 kept
    assert set(splits["test"]["SessionId"]) == {3}


def test_rsc15_filter_is_one_pass_without_dedup():
    # session 1 is `i i`; sessions 2-4 are (1 5); item 5 (support 3) goes, then sessions 2-4 are
    # length 1 and go in the final length step; `i i` survives (no dedup in rsc15).
    data = [(1, 1, 1.0), (1, 1, 2.0)]
    data += [(s, i, float(10 * s + i)) for s in range(2, 5) for i in (1, 5)]
    full, trace = P.rsc15_filter(frame(data))
    assert rows(full) == [(1, 1, 1.0), (1, 1, 2.0)]
    assert [s["events"] for s in trace.steps] == [8, 8, 5, 2]


@pytest.mark.parametrize("unit,expected_days", [(1.0, 2.0), (0.001, 2.0)])
def test_frame_stats(unit, expected_days):
    span = 2 * 86400 / unit
    df = frame([(1, 1, 0), (1, 2, int(span)), (2, 1, 5), (2, 3, 6)])
    s = P.frame_stats(df, unit)
    assert (s["events"], s["sessions"], s["items"], s["targets"]) == (4, 2, 3, 2)
    assert s["days"] == pytest.approx(expected_days)
    assert s["start_utc"] == "1970-01-01T00:00:00.000Z"


def test_first_appearance_ranks_all_come_from_the_original_row_order():
    # a second rank computed after the first join would see the join's row order instead
    n = 20_000
    df = pl.DataFrame(
        {"u": [i % 997 for i in range(n)], "p": [(i * 7919) % 1013 for i in range(n)]}
    )
    out = P.first_appearance_index(df, {"u": "ku", "p": "kp"}).collect()
    expected = {v: r for r, v in enumerate(df["p"].unique(maintain_order=True))}
    assert all(expected[p] == kp for p, kp in out.select("p", "kp").iter_rows())


@pytest.mark.parametrize("wide", [False, True])
def test_sort_rows_packed_key_equals_multi_column_sort(wide):
    import numpy as np

    rng = np.random.default_rng(0)
    n = 5000
    major = rng.integers(-50, 50, n) * (2**40 if wide else 1)  # wide: ranges need > 64 bits
    df = pl.DataFrame(
        {"k": major, "t": rng.integers(0, 30, n), "m": rng.integers(0, 7, n), "row": np.arange(n)}
    )
    got = P.sort_rows(df, "k", "t", "m").select("k", "t", "m")
    assert got.equals(df.sort(["k", "t", "m"]).select("k", "t", "m"))
