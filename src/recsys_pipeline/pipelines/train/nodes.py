"""Nodes of the training template (any next-item model of the registry): train -> evaluate
(with two baselines) -> report -> recommend."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from recsys_pipeline.evaluation import evaluate  # noqa: E402
from recsys_pipeline.evaluation.evaluate import EvaluationResult  # noqa: E402
from recsys_pipeline.models.baselines import LastItemCooccurrence, MostPopular  # noqa: E402
from recsys_pipeline.models.registry import (  # noqa: E402
    create_model,
    model_class,
    resolve_params,
)
from recsys_pipeline.serving.recommend import recommend  # noqa: E402
from recsys_pipeline.storage.partial import prune_empty  # noqa: E402

logger = logging.getLogger(__name__)

#: per-epoch fields kept in the history report (when the model records them)
HISTORY_FIELDS = ("epoch", "loss", "seconds", "batches_per_s", "targets_per_s", "valid_metric")


def run_params(params: dict[str, Any]) -> dict[str, Any]:
    """The model parameters of a resolved block, after applying the run setting
    ``num_threads`` (torch's CPU threads: small models run much faster on one thread, measured
    20x on a busy 2-core machine, large ones may not); ``num_threads`` is removed."""
    params = dict(params)
    threads = params.pop("num_threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    return params


def epoch_history(model: Any) -> list[dict[str, Any]]:
    """The model's per-epoch records (``EpochStats`` or dicts) as plain dicts."""
    records = []
    for stats in model.history:
        record = stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)
        records.append({k: record[k] for k in HISTORY_FIELDS if record.get(k) is not None})
    return records


def train_model(
    train_full: pl.DataFrame,
    block: dict[str, Any],
    training: dict[str, Any] | None = None,
    *,
    kind: str,
    dataset: str,
    valid: pl.DataFrame | None = None,
) -> tuple[Any, list[dict], dict[str, list[dict]]]:
    """Train a ``kind`` model (the registry's) on ``train_full`` with its parameter block
    resolved for ``dataset``; returns the model, its epoch history and MLflow metrics.

    ``training.checkpoint_dir``: models whose ``fit`` takes a ``checkpoint_dir`` checkpoint
    every epoch under ``<checkpoint_dir>/<dataset>/<kind>``, so that a killed run resumes from
    its last finished epoch (the checkpoint, and the folders it leaves empty, are removed
    when training ends).

    ``valid``: validation targets given to ``fit`` when the block sets ``patience`` (early
    stopping on them)."""
    params = run_params(resolve_params(block, dataset))
    model = create_model(kind, params)
    fit_args: dict[str, Any] = {}
    if valid is not None and params.get("patience") is not None:
        fit_args["valid"] = valid
    root = (training or {}).get("checkpoint_dir")
    if root and "checkpoint_dir" in inspect.signature(model.fit).parameters:
        fit_args["checkpoint_dir"] = Path(root) / dataset / kind
    model.fit(train_full, **fit_args)
    if "checkpoint_dir" in fit_args:  # fit removed the checkpoint: its empty folders go too
        prune_empty(fit_args["checkpoint_dir"], Path(root).parent)
    history = epoch_history(model)
    tracked = {
        name: [{"value": float(row[name]), "step": row["epoch"]} for row in history]
        for name in HISTORY_FIELDS[1:]
        if history and name in history[0]
    }
    return model, history, tracked


def evaluate_one(model: Any, test: pl.DataFrame, settings: dict[str, Any]) -> EvaluationResult:
    """One model on ``test`` under the session protocol of ``settings``
    (``params:evaluation``); the result's ``label()`` names the protocol."""
    return evaluate(
        model,
        test,
        cutoffs=tuple(settings["cutoffs"]),
        mode=settings["mode"],
        batch_size=settings["batch_size"],
        item_chunk=settings.get("item_chunk"),
        progress=settings.get("progress", True),
        min_targets=int(settings.get("min_targets", 1)),
    )


def evaluate_models(
    model: Any,
    train_full: pl.DataFrame,
    test: pl.DataFrame,
    settings: dict[str, Any],
    *,
    kind: str,
) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """The ``kind`` model and the most-popular and last-item co-occurrence baselines, on the
    same test (the shared evaluation: full ranking, every position after a session's first).

    Returns the metrics per model and the same figures for MLflow (``recall@20`` is logged as
    ``<model>.recall_at_20``: MLflow names may not contain ``@``).
    """
    candidates = {
        kind: model,
        "most_popular": MostPopular.fit(train_full),
        "last_item_cooccurrence": LastItemCooccurrence.fit(train_full),
    }
    metrics = {
        name: {k: float(v) for k, v in evaluate_one(m, test, settings).items()}
        for name, m in candidates.items()
    }
    for name, values in metrics.items():
        shown = "  ".join(
            f"{k}={v:.4f}" for k, v in values.items() if k.startswith(("recall@", "mrr@"))
        )
        logger.debug("%-24s %s", name, shown)
    return metrics, tracked_metrics(metrics)


def tracked_metrics(metrics: dict[str, dict[str, float]]) -> dict[str, dict]:
    """``{model: {metric: value}}`` as MLflow metrics: ``<model>.<metric>`` with ``@`` spelled
    ``_at_`` (MLflow names may not contain ``@``), step 0."""
    return {
        f"{name}.{key.replace('@', '_at_')}": {"value": value, "step": 0}
        for name, values in metrics.items()
        for key, value in values.items()
    }


def plot_report(
    history: list[dict], metrics: dict[str, dict[str, float]], *, kind: str
) -> tuple[Any, Any]:
    """Loss curve per epoch of the ``kind`` model, and Recall@k / MRR@k bars of every model."""
    loss_fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o")
    ax.set(xlabel="epoch", ylabel="training loss", title=f"{_display(kind)} training loss")
    ax.grid(alpha=0.3)
    loss_fig.tight_layout()

    keys = [k for k in next(iter(metrics.values())) if k.startswith(("recall@", "mrr@"))]
    bars, ax = plt.subplots(figsize=(max(6, len(keys) * 0.9), 4))
    width = 0.8 / len(metrics)
    for i, (name, values) in enumerate(metrics.items()):
        ax.bar(
            [j + i * width for j in range(len(keys))], [values[k] for k in keys], width, label=name
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys, rotation=45)
    ax.set(ylabel="value", title="Next-item metrics on test (full ranking)")
    ax.legend()
    bars.tight_layout()
    plt.close(loss_fig)
    plt.close(bars)
    return loss_fig, bars


def _display(kind: str) -> str:
    """The model's display name (its class name, e.g. ``GRU4Rec``)."""
    try:
        return model_class(kind).__name__
    except ValueError:
        return kind


def recommend_top_k(model: Any, test: pl.DataFrame, settings: dict[str, Any]) -> pl.DataFrame:
    """Top-k next items after each test session's events (raw ids), one row per session."""
    sessions = (
        test.sort("SessionId", "Time")
        .group_by("SessionId", maintain_order=True)
        .agg(pl.col("ItemId"))
    )
    known = set(model.item_ids.tolist())
    sessions = sessions.filter(
        pl.col("ItemId").map_elements(
            lambda xs: any(x in known for x in xs), return_dtype=pl.Boolean
        )
    )
    k = int(settings["k"])
    result = recommend(
        model,
        sessions["ItemId"].to_list(),
        k=k,
        exclude_seen=bool(settings.get("exclude_seen", False)),
    )
    return pl.DataFrame(
        {
            "SessionId": sessions["SessionId"],
            "rank": [list(range(1, k + 1))] * sessions.height,
            "ItemId": result.items.reshape(sessions.height, -1).tolist(),
            "score": result.scores.reshape(sessions.height, -1).astype(float).tolist(),
        }
    ).explode("rank", "ItemId", "score")
