"""Day-by-day replay, the evaluation protocol of Transformers4Rec (incremental training).

The event log is cut into days (:func:`split_days`; a session belongs to the day of its first
event and is never cut). :func:`replay` then trains one or more next-item models of the registry
(each independently, on the same days) on the first ``first_train_days`` days and, for every
following day ``d``:

1. evaluates the current models on day ``d`` (they have seen only the days before ``d``), and the
   baselines :class:`~recsys_pipeline.models.baselines.MostPopular` and
   :class:`~recsys_pipeline.models.baselines.LastItemCooccurrence` fitted on *all* days before
   ``d``;
2. updates each model with day ``d``: ``mode="fine_tune"`` continues training on day ``d`` only
   (the model's ``fine_tune``; new items are appended to the item tables); ``"retrain_growing"``
   retrains from scratch on all days up to ``d``; ``"retrain_sliding"`` retrains from scratch on
   the last ``sliding_days`` days up to ``d``.

Evaluation is :func:`~recsys_pipeline.evaluation.evaluate.evaluate` (full ranking): test events
of items a model does not know are dropped (the session is bridged), so items first appearing on
day ``d`` are never targets of day ``d`` (``n_new_items`` counts them). The result holds one row
per evaluated day and the metrics averaged over time (mean over days, and the mean weighted by
the number of targets of each day). :func:`plot_replay` draws a metric over the days.

``protocol="t4rec"`` is Transformers4Rec's own protocol (Moreira et al. 2021) instead:
every day's sessions lose consecutive repeats, keep their last ``max_session_length`` (20)
items and only sessions of 2 or more items stay (:func:`t4rec_sessions`); each evaluated day's
sessions are split 50:50 (seeded, by session) into a validation half (held out: no model sees
it before the day is over) and a test half; the **target is the last item of each test
session**, ranked against all items after the session's earlier items
(:func:`~recsys_pipeline.evaluation.last_item.evaluate_last_item`, history not excluded; a
target item the model never saw counts as a miss, as in the reference, whose vocabulary holds
every item id). Metrics: ``recall@k`` (= HR@k), ``ndcg@k`` and ``mrr@k``, averaged over the days.
The models are then updated with the whole day, both halves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from recsys_pipeline.evaluation.evaluate import evaluate
from recsys_pipeline.evaluation.last_item import evaluate_last_item
from recsys_pipeline.models.base import ModelParams, NextItemModel
from recsys_pipeline.models.baselines import LastItemCooccurrence, MostPopular
from recsys_pipeline.models.registry import create_model, model_class

logger = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "PROTOCOLS",
    "ReplayResult",
    "plot_replay",
    "replay",
    "split_days",
    "split_halves",
    "t4rec_sessions",
]

#: How the model is updated with each evaluated day.
MODES = ("fine_tune", "retrain_growing", "retrain_sliding")
#: What is evaluated on a day: every position after a session's first (``"sessions"``), or the
#: last item of each test-half session after Transformers4Rec's preprocessing (``"t4rec"``).
PROTOCOLS = ("sessions", "t4rec")
#: Baseline names used in the column names of the per-day table (``"<model>/<metric>"``; the
#: trained model's name there is its kind).
MOST_POPULAR = "most_popular"
LAST_ITEM = "last_item_cooccurrence"

Day = tuple[date, pl.DataFrame]


def split_days(
    events: pl.DataFrame,
    time_key: str = "Time",
    unit_seconds: float = 1.0,
    tz: str = "UTC",
    *,
    session_key: str = "SessionId",
    item_key: str = "ItemId",
) -> list[Day]:
    """Cut ``events`` into calendar days; a session goes whole to the day of its first event.

    Args:
        events: one row per event with ``session_key``, ``item_key`` and ``time_key``.
        time_key: the time column, a number of ``unit_seconds`` since the Unix epoch.
        unit_seconds: seconds per unit of ``time_key`` (1 for seconds, 0.001 for milliseconds).
        tz: time zone in which the calendar days are taken.
        session_key: the session column.
        item_key: the item column.

    Returns:
        ``[(day, frame), ...]`` in ascending day order, only days on which a session starts;
        every ``frame`` has the columns ``SessionId``, ``ItemId``, ``Time`` (renamed from the
        keys, values unchanged), sorted by session start, session, then time (row order breaks
        ties).
    """
    missing = [c for c in (session_key, item_key, time_key) if c not in events.columns]
    if missing:
        raise ValueError(f"events have no column(s) {missing} (columns: {events.columns})")
    if unit_seconds <= 0:
        raise ValueError(f"unit_seconds must be positive, got {unit_seconds}")
    frame = events.select(
        pl.col(session_key).alias("SessionId"),
        pl.col(item_key).alias("ItemId"),
        pl.col(time_key).alias("Time"),
    ).with_row_index("_row")
    micros = (pl.col("Time").min().over("SessionId").cast(pl.Float64) * (unit_seconds * 1e6)).cast(
        pl.Int64
    )
    frame = frame.with_columns(
        _start=micros,
        _day=pl.from_epoch(micros, time_unit="us")
        .dt.replace_time_zone("UTC")
        .dt.convert_time_zone(tz)
        .dt.date(),
    ).sort(["_start", "SessionId", "Time", "_row"])
    out: list[Day] = []
    for (day,), part in frame.group_by("_day", maintain_order=True):
        out.append((day, part.select("SessionId", "ItemId", "Time")))
    out.sort(key=lambda pair: pair[0])
    logger.info(
        "split_days: %d events in %d days (%s .. %s)",
        events.height,
        len(out),
        out[0][0] if out else None,
        out[-1][0] if out else None,
    )
    return out


@dataclass
class ReplayResult:
    """The outcome of :func:`replay`.

    Attributes:
        table: one row per evaluated day: ``day`` (date), ``n_events``, ``n_sessions``,
            ``n_valid_sessions`` (``"t4rec"``: the held-out half), ``n_new_items`` (distinct
            items of the day absent from all earlier days); per trained model
            ``"<kind>/n_known_items"`` (its vocabulary when evaluating the day),
            ``"<kind>/train_seconds"`` (the training that produced the model evaluated on the
            day) and ``"<kind>/eval_seconds"``; per model (trained and baselines)
            ``"<model>/<metric>"`` for every metric and ``"<model>/n_targets"``.
        mean: ``{"<model>/<metric>": mean over the evaluated days}`` (days without a target
            are left out).
        weighted_mean: the same, each day weighted by the model's number of targets.
        models: the model names, the trained models first (in the order given), then the
            baselines.
        metrics: the metric names (``recall@k``, ``mrr@k``).
        config: the replay's settings (mode, days, each trained model's parameters, ...).
    """

    table: pl.DataFrame
    mean: dict[str, float]
    weighted_mean: dict[str, float]
    models: list[str]
    metrics: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: config, per-day rows (days as ISO strings) and the averages."""
        rows = [
            {k: (v.isoformat() if isinstance(v, date) else _json_number(v)) for k, v in r.items()}
            for r in self.table.to_dicts()
        ]
        return {
            "config": self.config,
            "models": list(self.models),
            "metrics": list(self.metrics),
            "days": rows,
            "mean": {k: _json_number(v) for k, v in self.mean.items()},
            "weighted_mean": {k: _json_number(v) for k, v in self.weighted_mean.items()},
        }


def _json_number(value: Any) -> Any:
    """``nan`` / ``inf`` -> ``None`` (strict JSON), other values unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metric_names(cutoffs: Sequence[int], protocol: str = "sessions") -> list[str]:
    names = ("recall", "mrr") if protocol == "sessions" else ("recall", "ndcg", "mrr")
    return [f"{name}@{k}" for name in names for k in cutoffs]


def t4rec_sessions(frame: pl.DataFrame, max_session_length: int = 20) -> pl.DataFrame:
    """Transformers4Rec's session preprocessing of one day (``SessionId``, ``ItemId``,
    ``Time`` in session order): consecutive repeats of an item within a session removed, the
    last ``max_session_length`` items kept, sessions of fewer than 2 items dropped."""
    if max_session_length < 2:
        raise ValueError(f"max_session_length must be >= 2, got {max_session_length}")
    repeat = (pl.col("ItemId") == pl.col("ItemId").shift(1).over("SessionId")).fill_null(False)
    out = frame.filter(~repeat)
    from_end = pl.len().over("SessionId") - pl.int_range(pl.len()).over("SessionId")  # 1 = last
    out = out.filter(from_end <= max_session_length)
    return out.filter(pl.len().over("SessionId") >= 2)


def split_halves(frame: pl.DataFrame, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(valid, test)``: the sessions of ``frame`` split 50:50 at random (seeded), whole."""
    sessions = frame.get_column("SessionId").unique(maintain_order=True).to_numpy()
    order = np.random.default_rng(seed).permutation(len(sessions))
    test_ids = pl.Series("SessionId", sessions[order[len(sessions) // 2 :]])
    is_test = pl.col("SessionId").is_in(test_ids.implode())
    return frame.filter(~is_test), frame.filter(is_test)


def _concat(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(list(frames), how="vertical_relaxed") if len(frames) > 1 else frames[0]


def _has_target(frame: pl.DataFrame) -> bool:
    """Whether some session of ``frame`` has at least two events."""
    return frame.height > 0 and bool(
        (frame.get_column("SessionId").value_counts()["count"] > 1).any()
    )


def replay(
    days: Sequence[Day],
    params: ModelParams | Mapping[str, Any],
    *,
    model: str | Sequence[str],
    first_train_days: int = 1,
    n_eval_days: int | None = None,
    fine_tune_epochs: int | None = None,
    fine_tune_learning_rate: float | None = None,
    optimizer_state: str = "carry",
    mode: str = "fine_tune",
    sliding_days: int = 7,
    cutoffs: Sequence[int] = (5, 10, 20),
    baselines: bool = True,
    eval_mode: str = "standard",
    progress: bool = False,
    callback: Callable[[date, dict[str, NextItemModel]], None] | None = None,
    protocol: str = "sessions",
    max_session_length: int = 20,
    split_seed: int = 0,
) -> ReplayResult:
    """Train on the first days, then evaluate on each following day and update with it.

    Args:
        days: ``[(day, frame), ...]`` in day order, as :func:`split_days` returns.
        params: the model's hyperparameters (or a dict of them); with several models,
            ``{kind: hyperparameters}`` for each of them.
        model: the kind of the trained model (a next-item model of the registry), or several
            kinds: each is trained, evaluated and updated on the same days and targets, one
            after the other.
        first_train_days: days used for the initial training (``fit``).
        n_eval_days: evaluate this many days after the initial ones (``None``: all the rest).
        fine_tune_epochs: epochs of every fine-tune round (``None``: ``params.n_epochs``).
        fine_tune_learning_rate: learning rate of the fine-tune rounds (``None``: params').
        optimizer_state: ``"carry"`` or ``"reset"`` (fine-tune mode, see the model's
            ``fine_tune``).
        mode: ``"fine_tune"``, ``"retrain_growing"`` or ``"retrain_sliding"``.
        sliding_days: window length of ``"retrain_sliding"`` (the initial training too).
        cutoffs: the ``k`` of Recall@k and MRR@k.
        baselines: also evaluate MostPopular and LastItemCooccurrence fitted on all days before.
        eval_mode: tie mode of the evaluation.
        progress: show progress bars.
        callback: called as ``callback(day, {name: model})`` just before the models are
            evaluated on ``day`` (inspection; must not modify the models).
        protocol: ``"sessions"`` or ``"t4rec"`` (module docstring).
        max_session_length: ``"t4rec"``: items kept per session (the last ones).
        split_seed: ``"t4rec"``: seeds each day's validation/test split (with the day index).

    Returns:
        :class:`ReplayResult`. The model after the last evaluated day is not updated with it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "t4rec":
        days = [(d, t4rec_sessions(f, max_session_length)) for d, f in days]
    if optimizer_state not in ("carry", "reset"):
        raise ValueError(f"optimizer_state must be 'carry' or 'reset', got {optimizer_state!r}")
    if first_train_days < 1 or first_train_days >= len(days):
        raise ValueError(
            f"first_train_days must be in [1, {len(days) - 1}] for {len(days)} days, "
            f"got {first_train_days}"
        )
    if sliding_days < 1:
        raise ValueError(f"sliding_days must be positive, got {sliding_days}")
    dates = [d for d, _ in days]
    if any(b <= a for a, b in zip(dates, dates[1:], strict=False)):
        raise ValueError("days must be in strictly ascending order")
    kinds = [model] if isinstance(model, str) else list(model)
    if not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"model must name one or more distinct models, got {model!r}")
    if isinstance(model, str):
        params = {model: params}
    elif isinstance(params, ModelParams) or set(kinds) - set(params):
        raise ValueError(f"several models need params as {{kind: params}} for each of {kinds}")
    resolved: dict[str, ModelParams] = {}
    for kind in kinds:
        cls = model_class(kind)
        if cls.task != "next_item":
            raise ValueError(f"replay needs next-item models; {kind!r} is a {cls.task} model")
        p = params[kind]
        resolved[kind] = p if isinstance(p, ModelParams) else cls.params_class.from_dict(dict(p))
    n_left = len(days) - first_train_days
    n_eval = n_left if n_eval_days is None else min(int(n_eval_days), n_left)
    if n_eval < 1:
        raise ValueError(f"n_eval_days must be positive, got {n_eval_days}")
    metrics = _metric_names(cutoffs, protocol)
    models = kinds + ([MOST_POPULAR, LAST_ITEM] if baselines else [])
    frames = [f for _, f in days]

    def window(stop: int) -> pl.DataFrame:
        """Training frame of the retrain modes: the days before index ``stop``."""
        start = max(0, stop - sliding_days) if mode == "retrain_sliding" else 0
        return _concat(frames[start:stop])

    init = (
        window(first_train_days)
        if mode == "retrain_sliding"
        else _concat(frames[:first_train_days])
    )
    trained: dict[str, NextItemModel] = {}
    train_seconds: dict[str, float] = {}
    for kind in kinds:
        t0 = time.perf_counter()
        trained[kind] = create_model(kind, resolved[kind]).fit(init, progress=progress)
        train_seconds[kind] = time.perf_counter() - t0
    seen_items = _concat(frames[:first_train_days]).get_column("ItemId").unique()
    rows: list[dict[str, Any]] = []
    for i in range(first_train_days, first_train_days + n_eval):
        day, test = days[i]
        day_frame = test  # what the models are updated with afterwards
        n_valid_sessions = 0
        if protocol == "t4rec":
            valid, test = split_halves(day_frame, seed=split_seed * 100_003 + i)
            n_valid_sessions = valid.get_column("SessionId").n_unique()
        day_items = day_frame.get_column("ItemId").unique()
        n_new = int((~day_items.is_in(seen_items)).sum())
        evaluated: dict[str, NextItemModel] = dict(trained)
        if baselines:
            past = _concat(frames[:i])
            evaluated[MOST_POPULAR] = MostPopular.fit(past)
            evaluated[LAST_ITEM] = LastItemCooccurrence.fit(past)
        if callback is not None:
            callback(day, evaluated)
        row: dict[str, Any] = {
            "day": day,
            "n_events": test.height,
            "n_sessions": test.get_column("SessionId").n_unique(),
            "n_new_items": n_new,
            "n_valid_sessions": n_valid_sessions,
        }
        for name, m in evaluated.items():
            if protocol == "t4rec":
                res = evaluate_last_item(
                    m, test, exclude_history=False, cutoffs=cutoffs, mode=eval_mode,
                    user_key="SessionId", unknown_targets="miss", progress=progress,
                    min_targets=0,  # a day without targets is a row with n_targets 0
                )  # fmt: skip
            else:
                res = evaluate(
                    m, test, cutoffs=cutoffs, mode=eval_mode, progress=progress, min_targets=0
                )
            row[f"{name}/n_targets"] = int(res["n_targets"])
            for metric in metrics:
                row[f"{name}/{metric}"] = float(res[metric])
            if name in trained:
                row[f"{name}/n_known_items"] = m.n_items
                row[f"{name}/train_seconds"] = train_seconds[name]
                row[f"{name}/eval_seconds"] = float(res["seconds"])
        rows.append(row)
        k_max = max(cutoffs)
        logger.info(
            "replay %s (%d/%d): %d new items, %s",
            day,
            i - first_train_days + 1,
            n_eval,
            n_new,
            ", ".join(
                f"{n} mrr@{k_max}={row[f'{n}/mrr@{k_max}']:.4f} ({row[f'{n}/n_targets']} targets)"
                for n in evaluated
            ),
        )
        seen_items = pl.concat([seen_items, day_items]).unique()
        if i + 1 == first_train_days + n_eval:
            break  # the last evaluated day is not trained on
        for kind in kinds:
            t0 = time.perf_counter()
            if mode == "fine_tune":
                if _has_target(day_frame):
                    trained[kind].fine_tune(
                        day_frame,
                        n_epochs=fine_tune_epochs,
                        learning_rate=fine_tune_learning_rate,
                        optimizer_state=optimizer_state,
                        progress=progress,
                    )
                else:
                    logger.warning("replay: day %s has no training target; not fine-tuned", day)
            else:
                trained[kind] = create_model(kind, resolved[kind]).fit(
                    window(i + 1), progress=progress
                )
            train_seconds[kind] = time.perf_counter() - t0

    front = ["day", "n_events", "n_sessions", "n_valid_sessions", "n_new_items"]
    front += [f"{k}/{c}" for k in kinds for c in ("n_known_items", "train_seconds", "eval_seconds")]
    cols = front + [f"{n}/{m}" for n in models for m in [*metrics, "n_targets"]]
    table = pl.DataFrame(rows).select(cols)
    mean, weighted = _averages(table, models, metrics)
    config = {
        "mode": mode,
        "first_train_days": first_train_days,
        "n_eval_days": n_eval,
        "fine_tune_epochs": fine_tune_epochs,
        "fine_tune_learning_rate": fine_tune_learning_rate,
        "optimizer_state": optimizer_state,
        "sliding_days": sliding_days,
        "cutoffs": [int(k) for k in cutoffs],
        "eval_mode": eval_mode,
        "protocol": protocol,
        "max_session_length": max_session_length if protocol == "t4rec" else None,
        "split_seed": split_seed if protocol == "t4rec" else None,
        "train_days": [d.isoformat() for d in dates[:first_train_days]],
        "eval_days": [d.isoformat() for d in dates[first_train_days : first_train_days + n_eval]],
        "models": kinds,
        "params": {kind: dataclasses.asdict(p) for kind, p in resolved.items()},
    }
    return ReplayResult(table, mean, weighted, models, metrics, config)


def _averages(
    table: pl.DataFrame, models: Sequence[str], metrics: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean over days and target-weighted mean of every ``"<model>/<metric>"`` column."""
    mean: dict[str, float] = {}
    weighted: dict[str, float] = {}
    for name in models:
        n = table.get_column(f"{name}/n_targets").to_numpy().astype(np.float64)
        for metric in metrics:
            col = f"{name}/{metric}"
            v = table.get_column(col).to_numpy().astype(np.float64)
            ok = (n > 0) & np.isfinite(v)
            mean[col] = float(v[ok].mean()) if ok.any() else math.nan
            weighted[col] = float((v[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else math.nan
    return mean, weighted


def plot_replay(result: ReplayResult, metric: str = "mrr@20") -> Figure:
    """One line per model of ``metric`` over the evaluated days; the averages in the legend.

    Uses :class:`matplotlib.figure.Figure` directly (no pyplot, Agg-safe).
    """
    if metric not in result.metrics:
        raise ValueError(f"metric {metric!r} not in the result ({result.metrics})")
    fig = Figure(figsize=(11, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    days = result.table.get_column("day").to_list()
    x = np.arange(len(days))
    for name in result.models:
        col = f"{name}/{metric}"
        label = f"{name} (mean {result.mean[col]:.4f}, weighted {result.weighted_mean[col]:.4f})"
        ax.plot(x, result.table.get_column(col).to_numpy(), marker="o", label=label)
    ax.set_xticks(x, [d.isoformat() if isinstance(d, date) else str(d) for d in days])
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("evaluated day (trained on the days before)")
    ax.set_ylabel(metric)
    setting = f"{result.config.get('mode', '?')}, {result.config.get('protocol', '?')} protocol"
    ax.set_title(f"Day-by-day replay ({setting}): {metric}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines
    fig.tight_layout()
    return fig
