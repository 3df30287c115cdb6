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
                nodes.gather_history,
                ["old_train", "old_ratings", "history", "ingest_report", "params:retrain"],
                "all_before",
                name="gather_history",
            ),
            Node(
                nodes.prepare,
                ["ingest_report", "all_before", "params:retrain", "params:preprocess"],
                ["new_train", "window", "ingest_summary"],
                name="prepare",
            ),
            Node(
                nodes.train_challenger,
                ["new_train", "all_before", "params:retrain", "parameters"],
                "challenger",
                name="train_challenger",
            ),
            Node(
                nodes.decide,
                [
                    "challenger",
                    "window",
                    "new_train",
                    "all_before",
                    "params:retrain",
                    "params:evaluation",
                ],
                "decision",
                name="decide",
            ),
            Node(
                nodes.challenger_card,
                ["challenger", "new_train", "decision", "params:retrain"],
                "challenger_card",
                name="challenger_card",
            ),
            Node(
                nodes.archive,
                ["ingest_report", "new_train", "window", "params:retrain", "decision"],
                "history_update",
                name="archive",
            ),
            Node(
                nodes.commit,
                ["ingest_report", "decision", "history_update"],
                "committed",
                name="commit",
            ),
        ],
        namespace="retrain",
        parameters={
            "params:retrain",
            "params:preprocess",
            "params:evaluation",
        },
    )
