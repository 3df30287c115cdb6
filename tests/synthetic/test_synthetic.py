"""Tests of the synthetic raw-event generator (recsys_pipeline.synthetic.sessions)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys_pipeline.synthetic.sessions import (
    EVENT_KINDS,
    FORMATS,
    ITEM_ID_OFFSETS,
    GroundTruth,
    SyntheticConfig,
    event_window,
    generate_events,
    ground_truth,
    hex_hash,
    raw_item_ids,
    write_raw,
)

SMALL = SyntheticConfig(n_events=20_000, n_items=1_000, n_users=2_000)
TINY = SyntheticConfig(n_events=3_000, n_items=300, n_users=400)

HEADERS = {
    "rees46": "event_time,event_type,product_id,category_id,category_code,brand,price,"
    "user_id,user_session",
    "coveo": "session_id_hash,event_type,product_action,product_skus_hash,"
    "server_timestamp_epoch_ms,hashed_url",
    "retailrocket": "timestamp,visitorid,event,itemid,transactionid",
    "diginetica": "sessionId;userId;itemId;timeframe;eventdate",
}
FILE_NAMES = {
    "rees46": ["2019-Oct.csv", "2019-Nov.csv"],
    "yoochoose": ["yoochoose-clicks.dat", "yoochoose-test.dat", "yoochoose-buys.dat"],
    "rsc15": ["yoochoose-clicks.dat", "yoochoose-test.dat", "yoochoose-buys.dat"],
    "coveo": ["release_10_23_2020.csv"],
    "retailrocket": ["events.csv"],
    "diginetica": ["train-item-views.csv"],
}
HEX64 = r"^[0-9a-f]{64}$"
UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
YOOCHOOSE_TS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"


def _ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Raw files of every format for SMALL (default windows)."""
    base = tmp_path_factory.mktemp("raw")
    return {fmt: write_raw(fmt, base / fmt, SMALL) for fmt in FORMATS}


@pytest.fixture(scope="module")
def canonical() -> tuple[pl.DataFrame, GroundTruth]:
    """Canonical events and ground truth of the default config."""
    return generate_events(SyntheticConfig())


@pytest.fixture(scope="module")
def view_pairs(canonical: tuple[pl.DataFrame, GroundTruth]) -> pl.DataFrame:
    """Consecutive view pairs (prev, item) inside generated sessions."""
    views = canonical[0].filter(pl.col("event") == "view")
    return views.with_columns(
        pl.col("item").shift(1).over("session").alias("prev"),
        pl.col("item").shift(2).over("session").alias("prev2"),
    ).drop_nulls("prev")


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_config_same_bytes_other_seed_differs(fmt: str, tmp_path: Path) -> None:
    first = write_raw(fmt, tmp_path / "a", TINY)
    second = write_raw(fmt, tmp_path / "b", TINY)
    other = write_raw(fmt, tmp_path / "c", SyntheticConfig(**{**TINY.__dict__, "seed": 7}))
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert any(a.read_bytes() != c.read_bytes() for a, c in zip(first, other, strict=True))


def test_generate_events_deterministic() -> None:
    a, gt_a = generate_events(TINY)
    b, gt_b = generate_events(TINY)
    assert a.equals(b)
    assert np.array_equal(gt_a.successors, gt_b.successors)
    assert np.array_equal(gt_a.probs, gt_b.probs)


# ----------------------------------------------------------------------------- raw formats


def test_file_names(raw: dict[str, list[Path]]) -> None:
    for fmt, paths in raw.items():
        assert [p.name for p in paths] == FILE_NAMES[fmt]
        assert all(p.is_file() and p.stat().st_size > 0 for p in paths)


def test_rees46(raw: dict[str, list[Path]]) -> None:
    oct_path, nov_path = raw["rees46"]
    for path in (oct_path, nov_path):
        assert path.read_text().splitlines()[0] == HEADERS["rees46"]
    df = pl.concat(
        [pl.read_csv(p, schema_overrides={"category_id": pl.Int64}) for p in raw["rees46"]]
    )
    assert df.columns == HEADERS["rees46"].split(",")
    assert df["event_time"].str.contains(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$").all()
    assert set(df["event_type"].unique()) == {"view", "cart", "remove_from_cart", "purchase"}
    assert df["product_id"].min() >= ITEM_ID_OFFSETS["rees46"]
    assert df["user_id"].min() >= 500_000_000
    assert df["user_session"].str.contains(UUID).all()
    assert df["category_code"].null_count() > 0 and df["brand"].null_count() > 0
    assert df["price"].dtype == pl.Float64 and df["price"].min() > 0
    ts = df["event_time"].str.strptime(pl.Datetime, "%Y-%m-%d %H:%M:%S UTC")
    oct_ts = ts[: pl.read_csv(oct_path).height]
    assert (oct_ts.dt.month() == 10).all() and (ts[oct_ts.len() :].dt.month() == 11).all()
    # each user_session is one user; the protocol's test and validation days are populated
    assert df.group_by("user_session").agg(pl.col("user_id").n_unique())["user_id"].max() == 1
    starts = df.with_columns(ts.alias("t")).group_by("user_session").agg(pl.col("t").min())
    per_day = starts.group_by(pl.col("t").dt.date()).len()
    for day in (date(2019, 11, 29), date(2019, 11, 30)):
        assert per_day.filter(pl.col("t") == day)["len"].sum() >= 30


@pytest.mark.parametrize("fmt", ["yoochoose", "rsc15"])
def test_yoochoose(fmt: str, raw: dict[str, list[Path]]) -> None:
    clicks_path, test_path, buys_path = raw[fmt]
    assert not clicks_path.read_text().startswith("session")
    names = ["session", "timestamp", "item", "category"]
    read = {"has_header": False, "new_columns": names, "schema_overrides": {"category": pl.String}}
    clicks = pl.read_csv(clicks_path, **read)
    test = pl.read_csv(test_path, **read)
    buys = pl.read_csv(
        buys_path,
        has_header=False,
        new_columns=["session", "timestamp", "item", "price", "quantity"],
    )
    for df in (clicks, test, buys):
        assert df["timestamp"].str.contains(YOOCHOOSE_TS).all()
        assert df["item"].min() >= ITEM_ID_OFFSETS[fmt]
        assert df["session"].dtype == pl.Int64
    assert clicks["category"].str.contains(r"^(0|S|\d{1,2})$").all()
    assert {"0", "S"} <= set(clicks["category"].unique())
    train_sessions = set(clicks["session"].unique())
    test_sessions = set(test["session"].unique())
    assert not train_sessions & test_sessions
    share = len(test_sessions) / (len(test_sessions) + len(train_sessions))
    assert 0.05 < share < 0.15
    assert set(buys["session"].unique()) <= train_sessions
    assert buys.height > 0 and buys["price"].dtype == pl.Int64
    times = pl.concat([clicks, test])["timestamp"].str.strptime(
        pl.Datetime("ms"), "%Y-%m-%dT%H:%M:%S%.3fZ"
    )
    assert times.min() >= datetime(2014, 4, 1) and times.max() < datetime(2014, 5, 1)
    assert times.dt.millisecond().n_unique() > 100


def test_rsc15_equals_yoochoose(raw: dict[str, list[Path]]) -> None:
    for a, b in zip(raw["yoochoose"], raw["rsc15"], strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_coveo(raw: dict[str, list[Path]]) -> None:
    (path,) = raw["coveo"]
    assert path.read_text().splitlines()[0] == HEADERS["coveo"]
    df = pl.read_csv(path)
    assert df.columns == HEADERS["coveo"].split(",")
    assert set(df["event_type"].unique()) == {"pageview", "event"}
    assert set(df["product_action"].drop_nulls().unique()) == {
        "detail",
        "add",
        "remove",
        "purchase",
        "click",
    }
    no_action = df.filter(pl.col("product_action").is_null())
    assert no_action.height > 0
    assert (no_action["event_type"] == "pageview").all()
    assert no_action["product_skus_hash"].null_count() == no_action.height
    with_action = df.filter(pl.col("product_action").is_not_null())
    assert with_action["product_skus_hash"].null_count() == 0
    assert (
        with_action.filter(pl.col("product_action") == "detail")["event_type"] == "pageview"
    ).all()
    assert (with_action.filter(pl.col("product_action") != "detail")["event_type"] == "event").all()
    for col in ("session_id_hash", "hashed_url"):
        assert df[col].str.contains(HEX64).all()
    assert with_action["product_skus_hash"].str.contains(HEX64).all()
    assert df["server_timestamp_epoch_ms"].dtype == pl.Int64
    lo, hi = event_window(SMALL, "coveo")
    assert df["server_timestamp_epoch_ms"].min() >= lo
    assert df["server_timestamp_epoch_ms"].max() < hi
    # one hash can hold gaps of more than one hour (the protocol cuts them)
    gaps = df.sort("session_id_hash", "server_timestamp_epoch_ms", maintain_order=True).select(
        pl.col("server_timestamp_epoch_ms").diff().over("session_id_hash").alias("gap")
    )["gap"]
    assert (gaps > 3_600_000).sum() > 10
    # sku hashes are the ground-truth raw ids
    skus = set(with_action["product_skus_hash"].unique())
    assert skus <= set(ground_truth(SMALL, "coveo").item_ids.tolist())


def test_retailrocket(raw: dict[str, list[Path]]) -> None:
    (path,) = raw["retailrocket"]
    assert path.read_text().splitlines()[0] == HEADERS["retailrocket"]
    df = pl.read_csv(path)
    assert df.columns == HEADERS["retailrocket"].split(",")
    assert set(df["event"].unique()) == {"view", "addtocart", "transaction"}
    is_tx = df["event"] == "transaction"
    assert df.filter(is_tx)["transactionid"].null_count() == 0
    assert df.filter(~is_tx)["transactionid"].null_count() == (~is_tx).sum()
    assert df["itemid"].min() >= ITEM_ID_OFFSETS["retailrocket"]
    split = _ms(2015, 9, 18, 3)
    week = 7 * 86_400_000
    ts = df["timestamp"]
    assert ts.min() >= _ms(2015, 8, 1) and ts.max() < split
    test_window = df.filter((ts >= split - week) & (ts < split))
    valid_window = df.filter((ts >= split - 2 * week) & (ts < split - week))
    assert test_window["visitorid"].n_unique() > 50
    assert valid_window["visitorid"].n_unique() > 50


def test_diginetica(raw: dict[str, list[Path]]) -> None:
    (path,) = raw["diginetica"]
    assert path.read_text().splitlines()[0] == HEADERS["diginetica"]
    df = pl.read_csv(path, separator=";", schema_overrides={"userId": pl.String})
    assert df.columns == HEADERS["diginetica"].split(";")
    assert (df["userId"] == "NA").mean() > 0.5
    assert df.filter(pl.col("userId") != "NA")["userId"].str.contains(r"^\d+$").all()
    assert df["eventdate"].str.contains(r"^\d{4}-\d{2}-\d{2}$").all()
    df = df.with_columns(pl.col("eventdate").str.to_date("%Y-%m-%d"))
    assert df["eventdate"].min() >= date(2016, 1, 1)
    assert df["eventdate"].max() < date(2016, 5, 30)
    # timeframe counts ms from the start of the session's first day
    first_day = pl.col("eventdate").first().over("sessionId")
    day_offset = (pl.col("eventdate") - first_day).dt.total_days()
    checked = df.select((pl.col("timeframe") // 86_400_000 == day_offset).alias("ok"), day_offset)
    assert checked["ok"].all()
    assert (checked["eventdate"] > 0).sum() > 0  # some sessions cross midnight
    assert df["timeframe"].max() > 86_400_000


# -------------------------------------------------------------------------------- structure


def test_n_events_close_to_request() -> None:
    for config in (TINY, SMALL, SyntheticConfig(n_events=40_000, other_event_rate=0.3)):
        events, _ = generate_events(config)
        assert abs(events.height - config.n_events) <= 0.1 * config.n_events
        views = (events["event"] == "view").sum()
        expected_views = config.n_events * (1 - config.other_event_rate)
        assert abs(views - expected_views) <= 0.1 * expected_views


def test_canonical_schema_and_order(canonical: tuple[pl.DataFrame, GroundTruth]) -> None:
    events, _ = canonical
    assert events.columns == ["user", "session", "item", "ts_ms", "event"]
    for col in ("user", "session", "item", "ts_ms"):
        assert events[col].dtype == pl.Int64
    assert set(events["event"].cast(pl.String).unique()) == set(EVENT_KINDS)
    assert events["item"].min() >= 0 and events["item"].max() < SyntheticConfig().n_items
    assert events["session"].is_sorted()
    within = events.select(pl.col("ts_ms").diff().over("session").alias("d"))["d"].drop_nulls()
    assert within.min() >= 0
    assert within.max() <= 20 * 60_000  # seconds to minutes apart
    assert (within == 0).sum() > 0  # some equal timestamps
    lo, hi = event_window(SyntheticConfig())
    assert events["ts_ms"].min() >= lo and events["ts_ms"].max() < hi
    assert events.group_by("session").agg(pl.col("user").n_unique())["user"].max() == 1


def test_sessions_single_events_and_repeats(
    canonical: tuple[pl.DataFrame, GroundTruth], view_pairs: pl.DataFrame
) -> None:
    views = canonical[0].filter(pl.col("event") == "view")
    lengths = views.group_by("session").len()["len"]
    assert 0.1 < (lengths == 1).mean() < 0.35
    assert lengths.max() >= 20
    assert (view_pairs["prev"] == view_pairs["item"]).sum() > 20  # i i
    assert (
        (view_pairs["prev2"] == view_pairs["item"]) & (view_pairs["prev"] != view_pairs["item"])
    ).sum() > 20  # i j i


def test_user_sessions_gaps(canonical: tuple[pl.DataFrame, GroundTruth]) -> None:
    events, _ = canonical
    sessions = (
        events.group_by("session")
        .agg(
            pl.col("user").first(),
            pl.col("ts_ms").min().alias("a"),
            pl.col("ts_ms").max().alias("b"),
        )
        .sort("user", "a")
    )
    gaps = sessions.select((pl.col("a") - pl.col("b").shift(1)).over("user").alias("g"))["g"]
    gaps = gaps.drop_nulls()
    assert gaps.min() > 0  # a user's sessions never overlap
    assert (gaps > 3_600_000).sum() > 1_000
    assert ((gaps < 3_600_000) & (gaps > 60_000)).sum() > 100
    assert (sessions.group_by("user").len()["len"] >= 3).sum() > 100


def test_zipf_popularity(canonical: tuple[pl.DataFrame, GroundTruth]) -> None:
    events, truth = canonical
    counts = (
        events.filter(pl.col("event") == "view").group_by("item").len()["len"].sort(descending=True)
    )
    top = counts[: SyntheticConfig().n_items // 10].sum()
    assert top / counts.sum() > 0.4
    assert truth.popularity.max() > 50 * np.median(truth.popularity)


def _successor_agreement(pairs: pl.DataFrame, truth: GroundTruth, n_top: int = 50) -> float:
    """Share of the n_top most frequent previous items whose empirical top successor is the
    ground-truth top-1."""
    best = (
        pairs.group_by("prev", "item")
        .len()
        .sort(["prev", "len", "item"], descending=[False, True, False])
        .group_by("prev", maintain_order=True)
        .first()
    )
    frequent = pairs.group_by("prev").len().sort(["len", "prev"], descending=[True, False])
    frequent = frequent.head(n_top).join(best, on="prev", suffix="_pair")
    hits = [
        truth.top_k(p, 1)[0] == i for p, i in zip(frequent["prev"], frequent["item"], strict=True)
    ]
    return sum(hits) / len(hits)


def test_transition_signal_recoverable(
    canonical: tuple[pl.DataFrame, GroundTruth], view_pairs: pl.DataFrame
) -> None:
    assert _successor_agreement(view_pairs, canonical[1]) >= 0.8


def test_transition_signal_in_raw_ids(raw: dict[str, list[Path]]) -> None:
    clicks = pl.read_csv(
        raw["yoochoose"][0], has_header=False, new_columns=["session", "ts", "item", "category"]
    )
    pairs = clicks.with_columns(pl.col("item").shift(1).over("session").alias("prev"))
    pairs = pairs.drop_nulls("prev")
    assert _successor_agreement(pairs, ground_truth(SMALL, "yoochoose")) >= 0.8


def test_ground_truth_api(canonical: tuple[pl.DataFrame, GroundTruth]) -> None:
    config = SyntheticConfig()
    truth = canonical[1]
    n, k = config.n_items, config.n_successors
    assert truth.successors.shape == (n, k) and truth.probs.shape == (n, k)
    assert np.allclose(truth.probs.sum(axis=1), 1.0)
    assert (np.diff(truth.probs, axis=1) <= 0).all()
    assert truth.p_follow == config.p_follow
    assert (truth.successors != np.arange(n)[:, None]).all()
    assert all(len(set(row)) == k for row in truth.successors.tolist())
    dist = truth.next_item_distribution(7)
    assert len(dist) == n and abs(sum(dist.values()) - 1.0) < 1e-9
    top = truth.top_k(7, 4)
    assert top[:3] == sorted(truth.successors[7].tolist(), key=lambda j: -dist[j])[:3]
    assert [dist[j] for j in top] == sorted((dist[j] for j in top), reverse=True)
    expected = (
        config.p_follow * truth.probs[7, 0]
        + (1 - config.p_follow) * truth.popularity[truth.successors[7, 0]]
    )
    assert dist[int(truth.successors[7, 0])] == pytest.approx(expected)
    pruned = truth.next_item_distribution(7, min_prob=0.05)
    assert pruned == {j: p for j, p in dist.items() if p > 0.05}
    assert set(truth.successors[7].tolist()) <= pruned.keys()


@pytest.mark.parametrize("fmt", FORMATS)
def test_raw_id_mapping(fmt: str, canonical: tuple[pl.DataFrame, GroundTruth]) -> None:
    config = SyntheticConfig()
    internal = canonical[1]
    truth = ground_truth(config, fmt)
    ids = raw_item_ids(fmt, config.n_items)
    assert np.array_equal(truth.item_ids, ids)
    assert np.array_equal(truth.successors, ids[internal.successors])
    assert np.array_equal(truth.probs, internal.probs)
    if fmt == "coveo":
        assert ids[3] == hex_hash(3, 11)[0] and re.match(HEX64, str(ids[3]))
    else:
        assert ids[3] == 3 + ITEM_ID_OFFSETS[fmt]
    raw_id = ids[5]
    assert truth.index_of(raw_id) == 5
    raw_top = truth.top_k(raw_id, 3)
    assert raw_top == ids[[int(j) for j in internal.top_k(5, 3)]].tolist()


def test_custom_window(tmp_path: Path) -> None:
    config = SyntheticConfig(
        n_events=3_000, n_items=300, n_users=400, start="2020-01-15", n_days=40
    )
    paths = write_raw("rees46", tmp_path, config)
    assert [p.name for p in paths] == ["2020-Jan.csv", "2020-Feb.csv"]
    events, _ = generate_events(config)
    assert events["ts_ms"].min() >= _ms(2020, 1, 15)
    assert events["ts_ms"].max() < _ms(2020, 2, 24)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_events": 0},
        {"n_items": 3, "n_successors": 3},
        {"p_follow": 1.5},
        {"other_event_rate": 1.0},
        {"mean_session_length": 0.5},
        {"seed": -1},
    ],
)
def test_invalid_config(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**kwargs)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        write_raw("movielens", tmp_path, TINY)


def test_second_order_signal_follows_the_view_two_steps_back():
    """p_skip: the third view onwards follows the successors of the view two steps back."""
    import numpy as np

    config = SyntheticConfig(n_events=60_000, n_items=300, p_follow=0.0, p_skip=0.9, seed=5)
    events, truth = generate_events(config)
    views = events.filter(pl.col("event") == "view").sort("session", "ts_ms")
    items = views["item"].to_numpy()
    sess = views["session"].to_numpy()
    same = (sess[2:] == sess[1:-1]) & (sess[1:-1] == sess[:-2])
    hits = [items[i + 2] in truth.successor_index[items[i]] for i in np.flatnonzero(same)]
    assert np.mean(hits) > 0.85  # 0.9 skip mass plus popularity's share of those successors
    dist = truth.next_item_probs(truth.item_ids[0], before=truth.item_ids[1])
    assert dist.sum() == pytest.approx(1.0)
    assert dist[truth.successor_index[1]].sum() >= 0.9 - 1e-9
