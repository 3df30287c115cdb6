"""Tests of the day-by-day replay (recsys_pipeline.operations.replay) on small synthetic data."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from matplotlib.figure import Figure

from recsys_pipeline.models.base import NextItemModel
from recsys_pipeline.operations.replay import (
    LAST_ITEM,
    MOST_POPULAR,
    ReplayResult,
    plot_replay,
    replay,
    split_days,
    split_halves,
    t4rec_sessions,
)
from recsys_pipeline.synthetic.sessions import SyntheticConfig, generate_events

torch.set_num_threads(1)

# ~3 600 views over 5 days; 1 500 items so that every day brings items never seen before.
CONFIG = SyntheticConfig(
    n_events=4_000, n_items=1_500, n_users=400, start="2024-03-01", n_days=5, seed=7
)
GRU4REC = "gru4rec"  # the trained model's kind, its name in the per-day table
PARAMS: dict[str, Any] = {
    "layers": [16],
    "n_epochs": 1,
    "batch_size": 16,
    "n_sample": 64,
    "learning_rate": 0.05,
    "device": "cpu",
}


def _views(config: SyntheticConfig) -> pl.DataFrame:
    """The views of the canonical synthetic log as SessionId / ItemId / Time (ms)."""
    events, _ = generate_events(config)
    return events.filter(pl.col("event") == "view").select(
        SessionId="session", ItemId="item", Time="ts_ms"
    )


@pytest.fixture(scope="module")
def views() -> pl.DataFrame:
    return _views(CONFIG)


@pytest.fixture(scope="module")
def days(views: pl.DataFrame) -> list[tuple[date, pl.DataFrame]]:
    return split_days(views, unit_seconds=0.001)


def _items(frames: list[pl.DataFrame]) -> set[int]:
    return set(pl.concat(frames).get_column("ItemId").to_list()) if frames else set()


class _Recorder:
    """Callback keeping, per evaluated day, each model's item vocabulary."""

    def __init__(self) -> None:
        self.vocab: dict[date, dict[str, set[Any]]] = {}

    def __call__(self, day: date, models: dict[str, NextItemModel]) -> None:
        assert day not in self.vocab, f"day {day} evaluated twice"
        self.vocab[day] = {name: set(m.item_ids.tolist()) for name, m in models.items()}


def _run(days: list[tuple[date, pl.DataFrame]], **kwargs: Any) -> tuple[ReplayResult, _Recorder]:
    rec = _Recorder()
    return replay(days, PARAMS, model=GRU4REC, callback=rec, **kwargs), rec


@pytest.fixture(scope="module")
def fine_tuned(days: list[tuple[date, pl.DataFrame]]) -> tuple[ReplayResult, _Recorder]:
    return _run(days, mode="fine_tune")


# ----------------------------------------------------------------------------- split_days


def test_split_days_in_order_and_sessions_whole(
    views: pl.DataFrame, days: list[tuple[date, pl.DataFrame]]
) -> None:
    dates = [d for d, _ in days]
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    assert len(days) == 5
    assert sum(f.height for _, f in days) == views.height
    for _, f in days:
        assert f.columns == ["SessionId", "ItemId", "Time"]
    # every session is in exactly one day: the day of its first event (UTC)
    owner: dict[int, date] = {}
    for d, f in days:
        for s in f.get_column("SessionId").unique().to_list():
            assert s not in owner
            owner[s] = d
    first = views.group_by("SessionId").agg(pl.col("Time").min(), pl.col("Time").max().alias("end"))
    for s, t, _ in first.iter_rows():
        assert owner[s] == datetime.fromtimestamp(t / 1000, tz=UTC).date()
    # the data has sessions crossing midnight, which stay whole on their first day
    crossing = first.filter(
        pl.from_epoch("Time", time_unit="ms").dt.date()
        != pl.from_epoch("end", time_unit="ms").dt.date()
    )
    assert crossing.height > 0


def test_split_days_time_zone_and_units() -> None:
    frame = pl.DataFrame(
        {
            "SessionId": [1, 1, 2, 2, 3],
            "ItemId": [10, 11, 12, 13, 14],
            # 2024-03-01 23:30 UTC (crossing midnight), 2024-03-02 00:30 UTC, 2024-03-02 12:00
            "Time": [1709335800.0, 1709339400.0, 1709339400.0, 1709339500.0, 1709380800.0],
        }
    )
    utc = split_days(frame)
    assert [(d, f.get_column("SessionId").unique().sort().to_list()) for d, f in utc] == [
        (date(2024, 3, 1), [1]),
        (date(2024, 3, 2), [2, 3]),
    ]
    ms = split_days(frame.with_columns(pl.col("Time") * 1000), unit_seconds=0.001)
    assert [d for d, _ in ms] == [d for d, _ in utc]
    tokyo = split_days(frame, tz="Asia/Tokyo")  # UTC+9: everything is on 2024-03-02 there
    assert [d for d, _ in tokyo] == [date(2024, 3, 2)]
    with pytest.raises(ValueError, match="no column"):
        split_days(frame.drop("Time"))


# ----------------------------------------------------------------------------- replay


def test_every_later_day_evaluated_once(
    days: list[tuple[date, pl.DataFrame]], fine_tuned: tuple[ReplayResult, _Recorder]
) -> None:
    result, rec = fine_tuned
    expected = [d for d, _ in days[1:]]
    assert result.table.get_column("day").to_list() == expected
    assert list(rec.vocab) == expected
    assert result.models == [GRU4REC, MOST_POPULAR, LAST_ITEM]
    assert (result.table.get_column(f"{GRU4REC}/n_targets") > 0).all()


def test_model_on_day_d_has_seen_only_earlier_days(
    days: list[tuple[date, pl.DataFrame]], fine_tuned: tuple[ReplayResult, _Recorder]
) -> None:
    result, rec = fine_tuned
    frames = [f for _, f in days]
    for i in range(1, len(days)):
        d = days[i][0]
        before = _items(frames[:i])
        new = _items([frames[i]]) - before
        assert new, "the fixture should bring new items every day"
        vocab = rec.vocab[d]
        # fine-tuning grows the vocabulary with exactly the items of the days before d
        assert vocab[GRU4REC] == before
        assert not vocab[GRU4REC] & new
        assert vocab[MOST_POPULAR] == before and vocab[LAST_ITEM] == before
        if i + 1 < len(days):  # known once day d has been trained on
            assert new <= rec.vocab[days[i + 1][0]][GRU4REC]
        row = result.table.row(i - 1, named=True)
        assert row["n_new_items"] == len(new)
        assert row[f"{GRU4REC}/n_known_items"] == len(before)
        # the targets of the day are its events of known items, minus the first of each session
        known = frames[i].filter(pl.col("ItemId").is_in(list(before)))
        sizes = known.group_by("SessionId").len().get_column("len").to_numpy()
        assert row[f"{GRU4REC}/n_targets"] == int((sizes[sizes > 1] - 1).sum())
        assert row[f"{MOST_POPULAR}/n_targets"] == row[f"{GRU4REC}/n_targets"]


@pytest.mark.parametrize("mode", ["retrain_growing", "retrain_sliding"])
def test_retrain_modes_same_shape(
    mode: str,
    days: list[tuple[date, pl.DataFrame]],
    fine_tuned: tuple[ReplayResult, _Recorder],
) -> None:
    result, rec = _run(days, mode=mode, sliding_days=2)
    ref = fine_tuned[0]
    assert result.table.shape == ref.table.shape
    assert result.table.columns == ref.table.columns
    assert result.table.get_column("day").to_list() == ref.table.get_column("day").to_list()
    assert result.config["mode"] == mode
    frames = [f for _, f in days]
    for i in range(1, len(days)):
        start = max(0, i - 2) if mode == "retrain_sliding" else 0
        assert rec.vocab[days[i][0]][GRU4REC] == _items(frames[start:i])
    # the baselines do not depend on the mode
    for col in ref.table.columns:
        if col.startswith((MOST_POPULAR, LAST_ITEM)):
            np.testing.assert_allclose(result.table[col].to_numpy(), ref.table[col].to_numpy())


def test_averages_are_means_of_the_days(fine_tuned: tuple[ReplayResult, _Recorder]) -> None:
    result, _ = fine_tuned
    t = result.table
    assert set(result.metrics) == {f"{m}@{k}" for m in ("recall", "mrr") for k in (5, 10, 20)}
    for name in result.models:
        n = t[f"{name}/n_targets"].to_numpy().astype(float)
        for metric in result.metrics:
            col = f"{name}/{metric}"
            v = t[col].to_numpy()
            assert result.mean[col] == pytest.approx(v.mean())
            assert result.weighted_mean[col] == pytest.approx((v * n).sum() / n.sum())
            assert 0.0 <= result.mean[col] <= 1.0
    assert result.mean[f"{GRU4REC}/mrr@20"] <= result.mean[f"{GRU4REC}/recall@20"]


def test_to_dict_is_json(fine_tuned: tuple[ReplayResult, _Recorder]) -> None:
    result, _ = fine_tuned
    out = json.loads(json.dumps(result.to_dict()))
    assert [r["day"] for r in out["days"]] == [
        d.isoformat() for d in result.table.get_column("day").to_list()
    ]
    assert out["mean"] == pytest.approx(result.mean)
    assert out["config"]["mode"] == "fine_tune"
    assert out["config"]["models"] == [GRU4REC]
    assert out["config"]["params"][GRU4REC]["layers"] == [16]


def test_plot_has_one_line_per_model(fine_tuned: tuple[ReplayResult, _Recorder]) -> None:
    result, _ = fine_tuned
    fig = plot_replay(result, metric="recall@20")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == len(result.models) == 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert all(
        f"{result.mean[f'{n}/recall@20']:.4f}" in lab
        for n, lab in zip(result.models, labels, strict=True)
    )
    with pytest.raises(ValueError, match="not in the result"):
        plot_replay(result, metric="ndcg@20")


def test_options_and_errors(days: list[tuple[date, pl.DataFrame]]) -> None:
    result = replay(
        days,
        PARAMS,
        model=GRU4REC,
        first_train_days=2,
        n_eval_days=2,
        baselines=False,
        optimizer_state="reset",
        fine_tune_epochs=1,
        cutoffs=(10,),
    )
    assert result.table.get_column("day").to_list() == [d for d, _ in days[2:4]]
    assert result.models == [GRU4REC]
    assert result.metrics == ["recall@10", "mrr@10"]
    assert len(plot_replay(result, "mrr@10").axes[0].get_lines()) == 1
    with pytest.raises(ValueError, match="mode"):
        replay(days, PARAMS, model=GRU4REC, mode="online")
    with pytest.raises(ValueError, match="first_train_days"):
        replay(days, PARAMS, model=GRU4REC, first_train_days=len(days))
    with pytest.raises(ValueError, match="ascending"):
        replay(days[::-1], PARAMS, model=GRU4REC)
    with pytest.raises(ValueError, match="kind: params"):
        replay(days, PARAMS, model=[GRU4REC, "sasrec"])
    with pytest.raises(ValueError, match="distinct"):
        replay(days, {GRU4REC: PARAMS}, model=[GRU4REC, GRU4REC])
    with pytest.raises(ValueError, match="next-item"):
        replay(days, {"neumf": {}}, model=["neumf"])


#: SASRec's and BERT4Rec's parameters here (both take these names)
TINY_TRANSFORMER: dict[str, Any] = {
    "maxlen": 20, "hidden_units": 16, "num_epochs": 1, "batch_size": 32, "device": "cpu",
}  # fmt: skip


def test_several_models_on_the_same_days_and_targets(
    days: list[tuple[date, pl.DataFrame]],
) -> None:
    """GRU4Rec and SASRec replayed together: each is trained and fine-tuned on its own (GRU4Rec's
    figures are those of a replay of GRU4Rec alone), both are ranked on the same targets."""
    seen: dict[date, dict[str, set[Any]]] = {}

    def record(day: date, models: dict[str, NextItemModel]) -> None:
        seen[day] = {name: set(m.item_ids.tolist()) for name, m in models.items()}

    kw: dict[str, Any] = {"protocol": "t4rec", "cutoffs": (10, 20), "n_eval_days": 3}
    both = replay(
        days, {GRU4REC: PARAMS, "sasrec": TINY_TRANSFORMER}, model=[GRU4REC, "sasrec"],
        callback=record, **kw,
    )  # fmt: skip
    alone = replay(days, PARAMS, model=GRU4REC, **kw)
    assert both.models == [GRU4REC, "sasrec", MOST_POPULAR, LAST_ITEM]
    assert both.config["models"] == [GRU4REC, "sasrec"]
    assert set(both.config["params"]) == {GRU4REC, "sasrec"}
    for col in alone.table.columns:
        if col.startswith((f"{GRU4REC}/", MOST_POPULAR, LAST_ITEM)) and "seconds" not in col:
            np.testing.assert_allclose(both.table[col].to_numpy(), alone.table[col].to_numpy())
    frames = [t4rec_sessions(f) for _, f in days]  # what the models train on
    for i, row in enumerate(both.table.iter_rows(named=True)):
        # the last item of every test-half session, whichever model ranks it
        assert row["sasrec/n_targets"] == row[f"{GRU4REC}/n_targets"] > 0
        assert row["sasrec/train_seconds"] > 0 and row["sasrec/eval_seconds"] > 0
        # both grew their vocabulary with the days before, and only those
        before = _items(frames[: i + 1])
        assert seen[row["day"]]["sasrec"] == seen[row["day"]][GRU4REC] == before
        assert row["sasrec/n_known_items"] == len(before)
    assert len(plot_replay(both, "ndcg@20").axes[0].get_lines()) == 4


# -------------------------------------------------------------------- Transformers4Rec protocol
def test_t4rec_sessions_preprocessing() -> None:
    frame = pl.DataFrame(
        {"SessionId": [1, 1, 1, 1, 2, 3, 3, 3, 3, 3],
         "ItemId": [5, 5, 6, 5, 7, 1, 2, 3, 4, 5],
         "Time": list(range(10))}
    )  # fmt: skip
    out = t4rec_sessions(frame, max_session_length=3)
    by = {s: g["ItemId"].to_list() for (s,), g in out.group_by("SessionId", maintain_order=True)}
    # repeats collapsed (5 5 6 5 -> 5 6 5), single-item session 2 dropped, session 3 cut to its
    # last 3 items
    assert by == {1: [5, 6, 5], 3: [3, 4, 5]}


def test_split_halves_is_seeded_and_whole() -> None:
    frame = pl.DataFrame({"SessionId": np.repeat(np.arange(11), 2), "ItemId": np.arange(22),
                          "Time": np.arange(22)})  # fmt: skip
    valid, test = split_halves(frame, seed=3)
    again = split_halves(frame, seed=3)[1]
    assert test.equals(again)
    sv, st = set(valid["SessionId"].to_list()), set(test["SessionId"].to_list())
    assert not sv & st and len(sv | st) == 11 and abs(len(sv) - len(st)) <= 1
    assert (valid.group_by("SessionId").len()["len"] == 2).all()  # sessions stay whole


@pytest.mark.parametrize("kind", ["gru4rec", "bert4rec"])
def test_t4rec_protocol_last_item_of_each_test_half_session(
    kind: str, days: list[tuple[date, pl.DataFrame]]
) -> None:
    params = PARAMS if kind == "gru4rec" else TINY_TRANSFORMER
    result = replay(days, params, model=kind, protocol="t4rec", cutoffs=(10, 20), n_eval_days=2,
                    split_seed=5)  # fmt: skip
    assert "ndcg@20" in result.metrics and f"{kind}/ndcg@20" in result.table.columns
    for i, row in enumerate(result.table.iter_rows(named=True)):
        day = t4rec_sessions(days[i + 1][1])
        valid, test = split_halves(day, seed=5 * 100_003 + i + 1)
        # one target per test session: the ones the model knows are ranked, the others missed
        assert row[f"{kind}/n_targets"] == test["SessionId"].n_unique()
        assert row["n_valid_sessions"] == valid["SessionId"].n_unique()
        assert 0 <= row[f"{kind}/ndcg@20"] <= row[f"{kind}/recall@20"] <= 1
    assert result.config["protocol"] == "t4rec"
