"""Nodes of the GRU4Rec template: train -> evaluate (with two baselines) -> report -> recommend."""

from __future__ import annotations

import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from recsys_pipeline.evaluation import evaluate  # noqa: E402
from recsys_pipeline.models.baselines import LastItemCooccurrence, MostPopular  # noqa: E402
from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams  # noqa: E402
from recsys_pipeline.recommend import recommend  # noqa: E402

logger = logging.getLogger(__name__)

MODELS = ("gru4rec", "most_popular", "last_item_cooccurrence")


def train_gru4rec(
    train_full: pl.DataFrame, params: dict[str, Any]
) -> tuple[GRU4Rec, list[dict], dict[str, list[dict]]]:
    """Train GRU4Rec on ``train_full``; returns the model, its epoch history and MLflow metrics.

    ``num_threads`` (a run setting, not a model parameter) sets torch's CPU threads; small models
    run much faster on one thread (measured 20x on a busy 2-core machine), large ones may not.
    """
    params = dict(params)
    threads = params.pop("num_threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    model = GRU4Rec(GRU4RecParams.from_dict(params)).fit(train_full)
    history = [
        {
            "epoch": s.epoch,
            "loss": s.loss,
            "seconds": s.seconds,
            "batches_per_s": s.batches_per_s,
            "targets_per_s": s.targets_per_s,
        }
        for s in model.history
    ]
    tracked = {
        name: [{"value": float(row[name]), "step": row["epoch"]} for row in history]
        for name in ("loss", "seconds", "targets_per_s", "batches_per_s")
    }
    return model, history, tracked


def _evaluate_one(model: Any, test: pl.DataFrame, settings: dict[str, Any]) -> dict[str, float]:
    result = evaluate(
        model,
        test,
        cutoffs=tuple(settings["cutoffs"]),
        mode=settings["mode"],
        batch_size=settings["batch_size"],
        item_chunk=settings.get("item_chunk"),
        progress=settings.get("progress", True),
    )
    return {k: float(v) for k, v in dict(result).items()}


def evaluate_models(
    model: GRU4Rec, train_full: pl.DataFrame, test: pl.DataFrame, settings: dict[str, Any]
) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """GRU4Rec and the most-popular and last-item co-occurrence baselines, on the same test.

    Returns the metrics per model and the same figures for MLflow (``recall@20`` is logged as
    ``<model>.recall_at_20``: MLflow names may not contain ``@``).
    """
    candidates = {
        "gru4rec": model,
        "most_popular": MostPopular.fit(train_full),
        "last_item_cooccurrence": LastItemCooccurrence.fit(train_full),
    }
    metrics = {name: _evaluate_one(m, test, settings) for name, m in candidates.items()}
    for name, values in metrics.items():
        shown = "  ".join(
            f"{k}={v:.4f}" for k, v in values.items() if k.startswith(("recall@", "mrr@"))
        )
        logger.info("%-24s %s", name, shown)
    tracked = {
        f"{name}.{key.replace('@', '_at_')}": {"value": value, "step": 0}
        for name, values in metrics.items()
        for key, value in values.items()
    }
    return metrics, tracked


def plot_report(history: list[dict], metrics: dict[str, dict[str, float]]) -> tuple[Any, Any]:
    """Loss curve per epoch, and Recall@k / MRR@k bars of every model."""
    loss_fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o")
    ax.set(xlabel="epoch", ylabel="training loss", title="GRU4Rec training loss")
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


def recommend_top_k(model: GRU4Rec, test: pl.DataFrame, settings: dict[str, Any]) -> pl.DataFrame:
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
