"""Nodes of ``train_neumf``: NeuMF on MovieLens, NCF protocol (sampled + full ranking) and the
global time split (full ranking), each next to the popularity (and co-occurrence) baselines."""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from recsys_pipeline.evaluation import full_ranking, sampled_ranking
from recsys_pipeline.evaluation.user_baselines import UserCooccurrence, UserPopularity
from recsys_pipeline.models.neumf import NeuMF, NeuMFParams
from recsys_pipeline.models.registry import resolve_params
from recsys_pipeline.pipelines.train.nodes import run_params, write_model_card

logger = logging.getLogger(__name__)


DATASET = "movielens"


def _fit(
    block: dict[str, Any],
    train: pl.DataFrame,
    valid: pl.DataFrame | None = None,
    valid_negatives: pl.DataFrame | None = None,
) -> NeuMF:
    """Fit NeuMF with the ``neumf`` block resolved for MovieLens; ``pretrain: true`` first
    trains GMF and MLP alone with the same settings and initialises NeuMF from them (NCF paper,
    section 3.4.1). ``num_threads``: torch CPU threads."""
    params = run_params(resolve_params(block, DATASET))
    pretrain = bool(params.pop("pretrain", False))
    config = NeuMFParams.from_dict(params)
    pretrained = None
    if pretrain and config.model == "neumf":
        parts = []
        for branch in ("gmf", "mlp"):
            logger.info("pretraining the %s branch", branch)
            sub = NeuMFParams.from_dict(config.to_dict() | {"model": branch})
            parts.append(NeuMF(sub).fit(train, valid, valid_negatives))
        pretrained = (parts[0], parts[1])
    return NeuMF(config).fit(train, valid, valid_negatives, pretrained=pretrained)


def _history(model: NeuMF) -> tuple[list[dict], dict[str, list[dict]]]:
    history = [dict(h) for h in model.history]
    tracked: dict[str, list[dict]] = {}
    for row in history:
        for key, value in row.items():
            if key == "epoch" or not isinstance(value, int | float):
                continue
            name = key.replace("@", "_at_")
            tracked.setdefault(name, []).append({"value": float(value), "step": row["epoch"]})
    return history, tracked


def train_neumf_ncf(
    train: pl.DataFrame,
    valid: pl.DataFrame,
    valid_negatives: pl.DataFrame,
    params: dict[str, Any],
) -> tuple[NeuMF, list[dict], dict[str, list[dict]]]:
    """NeuMF on the NCF split; validation (never test) drives the early stop at
    ``threshold`` and is reported per epoch."""
    model = _fit(params, train, valid, valid_negatives)
    return model, *_history(model)


def train_neumf_time(
    train: pl.DataFrame, params: dict[str, Any]
) -> tuple[NeuMF, list[dict], dict[str, list[dict]]]:
    """NeuMF on the global time split's training part."""
    model = _fit(params, train)
    return model, *_history(model)


def _metrics(result: Any) -> dict[str, float]:
    return {k: float(v) for k, v in dict(result).items()}


def _tracked(metrics: dict[str, dict[str, float]]) -> dict[str, dict]:
    return {
        f"{name}.{key.replace('@', '_at_')}": {"value": value, "step": 0}
        for name, values in metrics.items()
        for key, value in values.items()
    }


def evaluate_ncf(
    model: NeuMF,
    train: pl.DataFrame,
    valid: pl.DataFrame,
    test: pl.DataFrame,
    test_negatives: pl.DataFrame,
    settings: dict[str, Any],
) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """NCF split, test: legacy sampled metrics (1 positive + the stored negatives, labelled
    ``sampled100_*``) and full ranking over all items minus the user's train and valid items;
    NeuMF and popularity the same way."""
    candidates = {"neumf": model, "popularity": UserPopularity().fit(train)}
    metrics = {}
    for name, candidate in candidates.items():
        sampled = sampled_ranking(
            candidate,
            test,
            test_negatives,
            cutoffs=tuple(settings["sampled_cutoffs"]),
            mode=settings["mode"],
        )
        full = full_ranking(
            candidate,
            test,
            exclude=[train, valid],
            cutoffs=tuple(settings["cutoffs"]),
            mode=settings["mode"],
            progress=False,
        )
        metrics[name] = _metrics(sampled) | _metrics(full)
        logger.info(
            "%-11s %s | %s",
            name,
            sampled.label() if hasattr(sampled, "label") else "",
            full.label(),
        )
    return metrics, _tracked(metrics)


def evaluate_time(
    model: Any,
    train: pl.DataFrame,
    test: pl.DataFrame,
    settings: dict[str, Any],
    name: str = "neumf",
) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """Global time split, test: full ranking minus the user's training items; the model (as
    ``name``), popularity and item co-occurrence (unknown users and items dropped, counted)."""
    candidates = {
        name: model,
        "popularity": UserPopularity().fit(train),
        "cooccurrence": UserCooccurrence().fit(train),
    }
    metrics = {}
    for label, candidate in candidates.items():
        full = full_ranking(
            candidate,
            test,
            exclude=train,
            cutoffs=tuple(settings["cutoffs"]),
            mode=settings["mode"],
            progress=False,
        )
        metrics[label] = _metrics(full)
        logger.info("%-12s %s", label, full.label())
    return metrics, _tracked(metrics)


#: the two protocols of this pipeline in words (model cards)
PROTOCOLS = {
    "ncf": "NCF split (each user's latest rating held out): full ranking with the user's "
    "training items left out, and the legacy sampled ranking (1 positive + 100 negatives)",
    "time": "global time split: every test rating of a user, full ranking with the user's "
    "training items left out",
}


def model_card(
    history: list[dict],
    metrics: dict[str, dict[str, float]],
    block: dict[str, Any],
    train: pl.DataFrame,
    *,
    split: str,
) -> str:
    """The model card next to ``movielens.neumf_<split>_model``."""
    return write_model_card(
        history, metrics, resolve_params(block, "movielens"), train, kind="neumf",
        dataset="movielens", protocol=PROTOCOLS[split],
        model_artifact=f"data/06_models/movielens/neumf_{split}",
    )  # fmt: skip
