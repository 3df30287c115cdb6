"""``kedro run --pipelines=retrain --params=retrain.dataset=<name>``: scheduled retraining with a
champion/challenger gate (README, "Scheduled retraining"). Two runs at once are refused by a lock
(:class:`recsys_pipeline.hooks.RetrainLockHook`)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.retrain import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(nodes.scan, ["params:retrain", "params:preprocess"], "ingest_report", name="scan"),
            Node(
                nodes.prepare,
                ["ingest_report", "params:retrain", "params:preprocess"],
                ["new_train", "window", "ingest_summary"],
                name="prepare",
            ),
            Node(
                nodes.train_challenger,
                ["new_train", "old_train", "params:retrain", "params:gru4rec", "params:neumf"],
                "challenger",
                name="train_challenger",
            ),
            Node(
                nodes.decide,
                ["challenger", "window", "new_train", "params:retrain", "params:evaluation"],
                "decision",
                name="decide",
            ),
            Node(nodes.commit, ["ingest_report", "decision"], "committed", name="commit"),
        ],
        namespace="retrain",
        parameters={
            "params:retrain",
            "params:preprocess",
            "params:gru4rec",
            "params:neumf",
            "params:evaluation",
        },
    )
