"""Nodes of the training template (any next-item model of the registry): train -> evaluate
(with two baselines) -> report -> recommend."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys_pipeline.evaluation import evaluate
from recsys_pipeline.evaluation.evaluate import EvaluationResult
from recsys_pipeline.models.baselines import LastItemCooccurrence, MostPopular
from recsys_pipeline.models.registry import (
    create_model,
    model_class,
    resolve_params,
)
from recsys_pipeline.reports import plots
from recsys_pipeline.reports.labels import PROTOCOL_WORDS
from recsys_pipeline.reports.model_card import model_card
from recsys_pipeline.reports.provenance import git_commit
from recsys_pipeline.serving.recommend import recommend
from recsys_pipeline.storage.partial import prune_empty

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
    item_ids: np.ndarray | None = None,
) -> tuple[Any, list[dict], dict[str, list[dict]]]:
    """Train a ``kind`` model (the registry's) on ``train_full`` with its parameter block
    resolved for ``dataset``; returns the model, its epoch history and MLflow metrics.

    ``training.checkpoint_dir``: models whose ``fit`` takes a ``checkpoint_dir`` checkpoint
    every epoch under ``<checkpoint_dir>/<dataset>/<kind>``, so that a killed run resumes from
    its last finished epoch (the checkpoint, and the folders it leaves empty, are removed
    when training ends).

    ``valid``: validation targets given to ``fit`` when the block sets ``patience`` (early
    stopping on them).

    ``item_ids``: the item catalogue (raw ids) to use as the model's item table; passed to
    ``fit`` when it takes ``item_ids``. A model whose ``fit`` does not (GRU4Rec) trains on the
    items of ``train_full``; it is an error when the catalogue holds other items."""
    params = run_params(resolve_params(block, dataset))
    model = create_model(kind, params)
    fit_args: dict[str, Any] = {}
    if item_ids is not None:
        if "item_ids" in inspect.signature(model.fit).parameters:
            fit_args["item_ids"] = np.asarray(item_ids)
        else:
            seen = np.unique(train_full.get_column("ItemId").to_numpy())
            extra = np.setdiff1d(np.asarray(item_ids), seen)
            if len(extra):
                raise ValueError(
                    f"{kind} on {dataset}: the item catalogue holds {len(extra)} item(s) that "
                    f"never occur in the training data (first: {extra[:5].tolist()}) and "
                    f"{kind} cannot rank items it has no events of; preprocess without "
                    "'catalog' to rank the training items"
                )
    if valid is not None and params.get("patience") is not None:
        if valid.height == 0:
            raise ValueError(
                f"{kind} on {dataset}: patience {params['patience']} needs validation items, "
                "and the split has none (preprocess_sequences holdout 'test'); set patience: "
                "null or preprocess with holdout: valid_test"
            )
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


def plot_template_report(
    history: list[dict],
    metrics: dict[str, dict[str, float]],
    block: dict[str, Any],
    *,
    kind: str,
    dataset: str,
) -> tuple[Any, Any]:
    """:func:`plot_report` of the training template: ``block`` is the model's parameter block
    (``params:<kind>``), resolved for ``dataset``; the session protocol."""
    return plot_report(history, metrics, resolve_params(block, dataset), kind=kind, dataset=dataset)


def plot_report(
    history: list[dict],
    metrics: dict[str, dict[str, float]],
    params: dict[str, Any] | None = None,
    *,
    kind: str,
    dataset: str,
    protocol: str = PROTOCOL_WORDS[""],
) -> tuple[Any, Any]:
    """The ``kind`` model's training loss per epoch (its loss named, from its ``params``; the
    validation metric beside it when training measured one), and Recall/MRR/NDCG at every
    cut-off of every model on the test targets under ``protocol`` (words), values on the bars."""
    params = params or {}
    name = _display(kind)
    loss = str(params.get("loss") or "loss")
    epochs = f", {len(history)} epoch{'s' if len(history) != 1 else ''}" if history else ""
    loss_fig = plots.training_figure(
        history,
        title=f"{name} on {dataset}: training loss per epoch{epochs}",
        loss=loss,
        valid_metric=params.get("valid_metric"),
    )
    n_targets = next((v.get("n_targets") for v in metrics.values() if v.get("n_targets")), None)
    targets = f", {n_targets:,.0f} targets" if n_targets else ""
    bars = plots.metrics_figure(
        metrics, title=f"{name} and baselines on {dataset}, test{targets}\n{protocol}"
    )
    return loss_fig, bars


def write_template_model_card(
    history: list[dict],
    metrics: dict[str, dict[str, float]],
    block: dict[str, Any],
    train: pl.DataFrame,
    *,
    kind: str,
    dataset: str,
) -> str:
    """:func:`write_model_card` of the training template: ``block`` (``params:<kind>``)
    resolved for ``dataset``; the session protocol."""
    params = resolve_params(block, dataset)
    return write_model_card(history, metrics, params, train, kind=kind, dataset=dataset)


def write_model_card(
    history: list[dict],
    metrics: dict[str, dict[str, float]],
    params: dict[str, Any],
    train: pl.DataFrame,
    *,
    kind: str,
    dataset: str,
    protocol: str = PROTOCOL_WORDS[""],
    model_artifact: str | None = None,
    model: str | None = None,
) -> str:
    """The model card (Markdown) saved next to the ``kind`` model trained with ``params`` on
    ``dataset``'s ``train`` split: data, protocol, parameters, metrics next to the baselines',
    training time and the source commit. ``model``: the model's row in ``metrics`` (default
    ``kind``)."""
    who = next((c for c in ("SessionId", "UserId") if c in train.columns), None)
    data = {"rows": train.height}
    if who is not None:
        data["sessions" if who == "SessionId" else "users"] = train[who].n_unique()
    if "ItemId" in train.columns:
        data["items"] = train["ItemId"].n_unique()
    return model_card(
        title=f"{_display(kind)} on {dataset}",
        dataset=dataset,
        data=data,
        protocol=protocol,
        params=params,
        metrics=metrics,
        model=model or kind,
        history=history,
        commit=git_commit(),
        model_artifact=model_artifact or f"data/06_models/{dataset}/{kind}",
    )


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
