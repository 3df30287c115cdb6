"""The training template (train -> evaluate -> report, and top-k), instantiated per dataset x
next-item model of the registry (the kedro-viz demo-project pattern).

Namespace ``<dataset>.<model>``: ``kedro run --pipelines=train --namespaces=diginetica.gru4rec``
trains ``gru4rec`` on ``diginetica.train_full`` with the block ``params:gru4rec`` resolved for
``diginetica`` (``defaults`` overridden by ``gru4rec.diginetica``) and evaluates it on
``diginetica.test`` next to the baselines; ``--namespaces=diginetica`` runs every model on it.
Outputs are the catalog's ``<dataset>.<model>.*`` entries.

Two protocols, chosen by the dataset:

* **session datasets** (``preprocess_<dataset>``): train on ``train_full``, evaluate every
  position after a test session's first (``params:evaluation``);
* **user-sequence datasets** (``preprocess_sequences``, e.g. ``video``): train on ``loo_train``
  (``loo_valid`` for early stopping when the model's block sets ``patience``; the item table =
  the dataset's ``items`` catalogue), evaluate each
  user's last item after its training and validation items (``params:sequence_evaluation``:
  full ranking with the history excluded, without, and the legacy sampled protocol).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.models.registry import kinds
from recsys_pipeline.pipelines.preprocess.pipeline import DATASETS
from recsys_pipeline.pipelines.preprocess_sequences.pipeline import DATASETS as SEQUENCE_DATASETS
from recsys_pipeline.pipelines.train import nodes, sequence_nodes
from recsys_pipeline.pipelines.wiring import bind

#: the session datasets (preprocess_<dataset>) and the generated one of the default run
SESSION_DATASETS = (*DATASETS, "synthetic")


def template(kind: str, dataset: str) -> Pipeline:
    """The training nodes of one model on one dataset, not yet namespaced."""
    return Pipeline(
        [
            Node(
                bind(nodes.train_model, kind=kind, dataset=dataset),
                ["train_full", "params:model_block", "params:training"],
                ["model", "history", "epoch_metrics"],
                name="train",
            ),
            Node(
                bind(nodes.evaluate_models, kind=kind),
                ["model", "train_full", "test", "params:evaluation"],
                ["metrics", "tracked_metrics"],
                name="evaluate",
            ),
            Node(
                bind(nodes.plot_template_report, kind=kind, dataset=dataset),
                ["history", "metrics", "params:model_block"],
                ["loss_curve", "metrics_plot"],
                name="report",
            ),
            Node(
                bind(nodes.write_template_model_card, kind=kind, dataset=dataset),
                ["history", "metrics", "params:model_block", "train_full"],
                "model_card",
                name="model_card",
            ),
            Node(
                nodes.recommend_top_k,
                ["model", "test", "params:recommend"],
                "recommendations",
                name="recommend",
                tags=["recommend"],
            ),
        ]
    )


def sequence_template(kind: str, dataset: str) -> Pipeline:
    """The training nodes of one model on one user-sequence dataset, not yet namespaced."""
    splits = ["loo_train", "loo_valid", "loo_test"]
    return Pipeline(
        [
            Node(
                bind(sequence_nodes.train_sequence_model, kind=kind, dataset=dataset),
                ["loo_train", "loo_valid", "items", "params:model_block", "params:training"],
                ["model", "history", "epoch_metrics"],
                name="train",
            ),
            Node(
                bind(sequence_nodes.evaluate_sequence_models, kind=kind),
                ["model", *splits, "params:sequence_evaluation"],
                ["metrics", "tracked_metrics"],
                name="evaluate",
            ),
            Node(
                bind(sequence_nodes.plot_sequence_report, kind=kind, dataset=dataset),
                ["history", "metrics", "params:model_block", "params:sequence_evaluation"],
                ["loss_curve", "metrics_plot"],
                name="report",
            ),
            Node(
                bind(sequence_nodes.write_sequence_model_card, kind=kind, dataset=dataset),
                [
                    "history",
                    "metrics",
                    "params:model_block",
                    "params:sequence_evaluation",
                    "loo_train",
                ],  # fmt: skip
                "model_card",
                name="model_card",
            ),
            Node(
                sequence_nodes.users_for_recommendations,
                splits,
                "whole_sequences",
                name="whole_sequences",
                tags=["recommend"],
            ),
            Node(
                nodes.recommend_top_k,
                ["model", "whole_sequences", "params:recommend"],
                "recommendations",
                name="recommend",
                tags=["recommend"],
            ),
        ]
    )


def for_pair(kind: str, dataset: str) -> Pipeline:
    """The template in namespace ``<dataset>.<kind>``, reading ``<dataset>``'s splits."""
    if dataset in SEQUENCE_DATASETS:
        return Pipeline(
            sequence_template(kind, dataset),
            namespace=f"{dataset}.{kind}",
            inputs={s: f"{dataset}.{s}" for s in ("loo_train", "loo_valid", "loo_test", "items")},
            parameters={
                "params:model_block": f"params:{kind}",
                "params:training": "params:training",
                "params:sequence_evaluation": "params:sequence_evaluation",
                "params:recommend": "params:recommend",
            },
        )
    return Pipeline(
        template(kind, dataset),
        namespace=f"{dataset}.{kind}",
        inputs={"train_full": f"{dataset}.train_full", "test": f"{dataset}.test"},
        parameters={
            "params:model_block": f"params:{kind}",
            "params:training": "params:training",
            "params:evaluation": "params:evaluation",
            "params:recommend": "params:recommend",
        },
    )


def create_pipeline(models: tuple[str, ...] | None = None, **kwargs) -> Pipeline:
    """Every next-item model (or ``models``) on every session and user-sequence dataset; pick
    with ``--namespaces=<dataset>`` or ``--namespaces=<dataset>.<model>``."""
    chosen = models if models is not None else tuple(kinds("next_item"))
    datasets = (*SESSION_DATASETS, *SEQUENCE_DATASETS)
    return sum((for_pair(kind, name) for name in datasets for kind in chosen), Pipeline([]))
