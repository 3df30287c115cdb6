"""``kedro run --pipelines=train_neumf``: NeuMF on the MovieLens splits of ``preprocess_movielens``.

Two parts (tags): ``ncf`` trains on ``ncf_train`` (early stop on ``ncf_valid``) and reports the
legacy sampled metrics next to full ranking on ``ncf_test``; ``time_split`` trains on
``time_train`` and ranks ``time_test`` (the recommended protocol). ``--tags=ncf`` runs one.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.train_neumf import nodes
from recsys_pipeline.pipelines.wiring import bind


def create_pipeline(**kwargs) -> Pipeline:
    ncf = Pipeline(
        [
            Node(
                nodes.train_neumf_ncf,
                ["ncf_train", "ncf_valid", "ncf_valid_negatives", "params:neumf"],
                ["neumf_ncf_model", "neumf_ncf_history", "neumf_ncf_epoch_metrics"],
                name="train_ncf",
            ),
            Node(
                nodes.evaluate_ncf,
                [
                    "neumf_ncf_model",
                    "ncf_train",
                    "ncf_valid",
                    "ncf_test",
                    "ncf_test_negatives",
                    "params:neumf_evaluation",
                ],
                ["neumf_ncf_metrics", "neumf_ncf_tracked_metrics"],
                name="evaluate_ncf",
            ),
            Node(
                bind(nodes.model_card, split="ncf"),
                ["neumf_ncf_history", "neumf_ncf_metrics", "params:neumf", "ncf_train"],
                "neumf_ncf_model_card",
                name="model_card_ncf",
            ),
        ],
        tags=["ncf"],
    )
    time_split = Pipeline(
        [
            Node(
                nodes.train_neumf_time,
                ["time_train", "params:neumf"],
                ["neumf_time_model", "neumf_time_history", "neumf_time_epoch_metrics"],
                name="train_time",
            ),
            Node(
                nodes.evaluate_time,
                ["neumf_time_model", "time_train", "time_test", "params:neumf_evaluation"],
                ["neumf_time_metrics", "neumf_time_tracked_metrics"],
                name="evaluate_time",
            ),
            Node(
                bind(nodes.model_card, split="time"),
                ["neumf_time_history", "neumf_time_metrics", "params:neumf", "time_train"],
                "neumf_time_model_card",
                name="model_card_time",
            ),
        ],
        tags=["time_split"],
    )
    return Pipeline(
        ncf + time_split,
        namespace="movielens",
        parameters={"params:neumf", "params:neumf_evaluation"},
    )
