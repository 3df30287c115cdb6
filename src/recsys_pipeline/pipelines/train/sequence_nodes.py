"""Nodes of the training template on **user-sequence** datasets (``preprocess_sequences``):
leave-one-out splits, the last-item protocol of the transformer papers.

* training: the model trains on ``loo_train`` (each user's sequence without its last two items;
  users with too few items wholly); with ``patience`` in its parameters it also gets
  ``loo_valid`` (one item per user) for a per-epoch validation metric, early stopping and the
  best epoch's weights.
* evaluation (``params:sequence_evaluation``): per user, the test item is ranked after the
  training items **and the validation item** (SASRec's and BERT4Rec's test input), for the
  model and the most-popular and last-item co-occurrence baselines (fitted on the same
  ``loo_train``), under every protocol of ``protocols``; every metric name carries its
  protocol (:data:`PROTOCOL_LABELS`).

Frames keep their ``UserId`` column on disk; models read a user's sequence as a session
(``SessionId``), so the nodes rename it.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from recsys_pipeline.evaluation.last_item import (
    GR_MAX_RANK,
    capped_rank_metrics,
    evaluate_last_item,
)
from recsys_pipeline.models.baselines import LastItemCooccurrence, MostPopular
from recsys_pipeline.models.registry import resolve_params
from recsys_pipeline.pipelines.train import nodes
from recsys_pipeline.pipelines.train.nodes import tracked_metrics, train_model
from recsys_pipeline.reports.labels import PROTOCOL_WORDS

logger = logging.getLogger(__name__)

#: protocol name -> prefix of its metric names
PROTOCOL_LABELS = {
    "full": "full_hist_excluded",  # all items ranked, the user's history excluded (default)
    "full_with_history": "full_hist_included",  # all items ranked, nothing excluded
    "sampled": "legacy",  # target vs sampled negatives (legacy; names sampled{n}_*)
    # generative-recommenders' evaluation: the last maxlen input items excluded, the query at
    # the target's time (time-aware models), ranks beyond 2,500 capped; mrr and mrr_exact
    "generative_recommenders": "gr",
}
_KEY = {"UserId": "SessionId"}


def _sessions(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.rename(_KEY) if "UserId" in frame.columns else frame


def train_sequence_model(
    loo_train: pl.DataFrame,
    loo_valid: pl.DataFrame,
    items: pl.DataFrame | None,
    block: dict[str, Any],
    training: dict[str, Any] | None = None,
    *,
    kind: str,
    dataset: str,
) -> tuple[Any, list[dict], dict[str, list[dict]]]:
    """Train a ``kind`` model on ``loo_train`` with its parameter block resolved for
    ``dataset``; the validation items drive early stopping when the block sets ``patience``.
    ``items`` (the dataset's item catalogue, ``ItemId``) is the model's item table: items that
    never occur in ``loo_train`` are then negatives and ranked candidates too (None: the items
    of ``loo_train``). Returns the model, its epoch history and the MLflow metric history."""
    return train_model(
        _sessions(loo_train),
        block,
        training,
        kind=kind,
        dataset=dataset,
        valid=_sessions(loo_valid),
        item_ids=None if items is None else items.get_column("ItemId").to_numpy(),
    )


def evaluate_protocol(
    model: Any,
    train: pl.DataFrame,
    valid: pl.DataFrame,
    test: pl.DataFrame,
    settings: dict[str, Any],
    protocol: str,
) -> tuple[dict[str, float], str]:
    """One protocol: each user's test item after its training items and its validation item
    (users without a test item, too short to split, are not scored). Frames keyed by
    ``SessionId``. Returns ``{"<label>.<metric>": value}`` and the protocol in words."""
    inputs = train
    common = {
        "targets": test,
        "append": valid,
        "cutoffs": tuple(settings["cutoffs"]),
        "mode": settings.get("mode", "standard"),
        "batch_size": settings.get("batch_size", 256),
        "item_chunk": settings.get("item_chunk"),
        "seed": settings.get("seed", 0),
        "user_key": "SessionId",
        "min_targets": int(settings.get("min_targets", 1)),
    }
    if protocol == "full":
        result = evaluate_last_item(model, inputs, exclude_history=True, **common)
    elif protocol == "full_with_history":
        result = evaluate_last_item(model, inputs, exclude_history=False, **common)
    elif protocol == "generative_recommenders":
        result = evaluate_last_item(
            model, inputs, exclude_history="window", query_time="target", return_ranks=True,
            **common,
        )  # fmt: skip
        n_targets, n_unknown = result["n_targets"], result["n_unknown_targets"]
        words = f"{result.label()}, ranks beyond {GR_MAX_RANK:,} capped (generative-recommenders)"
        result = capped_rank_metrics(result.ranks, common["cutoffs"]) | {
            "n_targets": n_targets, "n_unknown_targets": n_unknown,
        }  # fmt: skip
        label = PROTOCOL_LABELS[protocol]
        out = {f"{label}.{k}": float(v) for k, v in result.items() if "@" in k or "mrr" in k}
        out[f"{label}.n_targets"] = float(n_targets)
        out[f"{label}.n_unknown_targets"] = float(n_unknown)
        return out, words
    elif protocol == "sampled":
        result = evaluate_last_item(
            model,
            inputs,
            ranking="sampled",
            n_negatives=settings.get("n_negatives", 100),
            negatives=settings.get("negatives", "uniform"),
            max_users=settings.get("max_users"),
            **common,
        )
    else:
        raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOL_LABELS)}")
    label = PROTOCOL_LABELS[protocol]
    out = {f"{label}.{k}": float(v) for k, v in result.items() if "@" in k}
    out[f"{label}.n_targets"] = float(result["n_targets"])
    out[f"{label}.n_unknown_targets"] = float(result["n_unknown_targets"])  # not scored
    return out, result.label()


def evaluate_sequence_models(
    model: Any,
    loo_train: pl.DataFrame,
    loo_valid: pl.DataFrame,
    loo_test: pl.DataFrame,
    settings: dict[str, Any],
    *,
    kind: str,
) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """The ``kind`` model and two baselines on the test items, under every protocol of
    ``settings["protocols"]``. Returns ``{model: {"<protocol>.<metric>": value}}`` and the
    same figures for MLflow (``<model>.<protocol>.ndcg_at_10``)."""
    train, valid, test = (_sessions(f) for f in (loo_train, loo_valid, loo_test))
    candidates = {
        kind: model,
        "most_popular": MostPopular.fit(train),
        "last_item_cooccurrence": LastItemCooccurrence.fit(train),
    }
    metrics: dict[str, dict[str, float]] = {}
    for name, candidate in candidates.items():
        values: dict[str, float] = {}
        for protocol in settings["protocols"]:
            values |= evaluate_protocol(candidate, train, valid, test, settings, protocol)[0]
        metrics[name] = values
        shown = "  ".join(f"{k}={v:.4f}" for k, v in values.items() if k.endswith("@10"))
        logger.debug("%-24s %s", name, shown)
    return metrics, tracked_metrics(metrics)


def main_protocol_metrics(
    metrics: dict[str, dict[str, float]], settings: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """The first protocol's ``recall@k`` / ``mrr@k`` per model, names without the prefix (for
    the report's bar plot, whose title names the protocol)."""
    label = PROTOCOL_LABELS[settings["protocols"][0]] + "."
    return {
        name: {k[len(label) :]: v for k, v in values.items() if k.startswith(label)}
        for name, values in metrics.items()
    }


def main_protocol(
    metrics: dict[str, dict[str, float]], settings: dict[str, Any]
) -> tuple[dict[str, dict[str, float]], str]:
    """:func:`main_protocol_metrics` and that protocol in words (plots, model cards)."""
    label = PROTOCOL_LABELS[settings["protocols"][0]]
    return main_protocol_metrics(metrics, settings), PROTOCOL_WORDS[label]


def plot_sequence_report(
    history: list[dict],
    metrics: dict[str, dict[str, float]],
    block: dict[str, Any],
    settings: dict[str, Any],
    *,
    kind: str,
    dataset: str,
) -> tuple[Any, Any]:
    """The training template's plots on a user-sequence dataset: the bars show the first
    protocol of ``settings`` (``params:sequence_evaluation``), named in the title."""
    shown, words = main_protocol(metrics, settings)
    return nodes.plot_report(
        history, shown, resolve_params(block, dataset), kind=kind, dataset=dataset, protocol=words
    )


def write_sequence_model_card(
    history: list[dict],
    metrics: dict[str, dict[str, float]],
    block: dict[str, Any],
    settings: dict[str, Any],
    loo_train: pl.DataFrame,
    *,
    kind: str,
    dataset: str,
) -> str:
    """The model card on a user-sequence dataset: the metrics of the first protocol of
    ``settings`` (``params:sequence_evaluation``)."""
    shown, words = main_protocol(metrics, settings)
    return nodes.write_model_card(
        history, shown, resolve_params(block, dataset), loo_train, kind=kind, dataset=dataset,
        protocol=words,
    )  # fmt: skip


def users_for_recommendations(
    loo_train: pl.DataFrame, loo_valid: pl.DataFrame, loo_test: pl.DataFrame
) -> pl.DataFrame:
    """Every user's whole sequence (train, valid, test in order) as sessions, for top-k
    recommendations of the next item after it."""
    frames = [_sessions(f).select("SessionId", "ItemId") for f in (loo_train, loo_valid, loo_test)]
    whole = pl.concat([f.with_columns(pl.lit(i).alias("_part")) for i, f in enumerate(frames)])
    whole = whole.with_row_index("_row").sort(["SessionId", "_part", "_row"], maintain_order=True)
    return whole.with_columns(pl.int_range(pl.len()).over("SessionId").alias("Time")).select(
        "SessionId", "ItemId", "Time"
    )
