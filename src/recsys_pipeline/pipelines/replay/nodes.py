"""Node of ``replay``: Transformers4Rec's day-by-day protocol on a dataset's filtered events."""

from __future__ import annotations

from typing import Any

import polars as pl
from matplotlib.figure import Figure

from recsys_pipeline.models.registry import model_class, named_kinds, resolve_params
from recsys_pipeline.operations.replay import plot_replay, replay, split_days
from recsys_pipeline.pipelines.train.nodes import run_params


def run_replay(
    events: pl.DataFrame, params: dict[str, Any], parameters: dict[str, Any]
) -> tuple[pl.DataFrame, dict[str, Any], Figure]:
    """Train ``replay.model`` (one model, or several: a list or names joined by ``+``, as
    ``--params`` allows no comma inside a value; each with its parameter block resolved for
    ``replay.dataset``) on the days before the last ``n_eval_days``, then for each of those
    days: evaluate (the models and the baselines), then fine-tune (or retrain) each on it.
    Returns the per-day table, the time averages and the plot of ``metric`` per day."""
    kinds = named_kinds(params["model"])
    model_params: dict[str, Any] = {}
    for kind in kinds:
        model_class(kind)  # an unknown kind: the error lists the known ones
        if not parameters.get(kind):
            raise ValueError(f"replay.model: no parameter block {kind!r} in the parameters")
        model_params[kind] = run_params(resolve_params(parameters[kind], params["dataset"]))
    days = split_days(events, unit_seconds=float(params["time_unit_seconds"]))
    n_eval = int(params["n_eval_days"])
    if len(days) <= n_eval:
        raise ValueError(f"{len(days)} days of data: need more than n_eval_days={n_eval}")
    result = replay(
        days,
        model_params,
        model=kinds,
        first_train_days=len(days) - n_eval,
        n_eval_days=n_eval,
        fine_tune_epochs=params.get("fine_tune_epochs"),
        optimizer_state=params["optimizer_state"],
        mode=params["mode"],
        sliding_days=int(params["sliding_days"]),
        cutoffs=tuple(params["cutoffs"]),
        protocol=params.get("protocol", "sessions"),
        max_session_length=int(params.get("max_session_length", 20)),
        split_seed=int(params.get("split_seed", 0)),
    )
    summary = result.to_dict()
    summary.pop("table", None)
    return result.table, summary, plot_replay(result, metric=params["metric"])
