"""``kedro run --pipelines=compare --params=compare.dataset=<name>``: every model that fits the
dataset (``compare.models``, default: every registered model of its task) and the task's
baselines, trained on one split and evaluated under one protocol -> one versioned table
(``compare.table`` JSON, ``compare.report`` markdown), one plot, and one MLflow run with a nested
run per model.

The catalog reads the dataset's splits through the runtime parameter ``compare.dataset`` and the
resolver ``compare_split`` (``splits.py``): a session dataset's ``train_full``/``test``, a user
sequence dataset's ``loo_*`` splits and item catalogue ``items`` (``compare.item_table``), MovieLens' ``time_*`` split.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.compare import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.compare_models,
                [
                    "train",
                    "valid",
                    "test",
                    "item_table",
                    "params:compare",
                    "parameters",
                    "params:training",
                    "params:evaluation",
                    "params:sequence_evaluation",
                ],
                ["table", "tracked_metrics"],
                name="train_and_evaluate",
            ),
            Node(nodes.comparison_markdown, "table", "report", name="report"),
            Node(nodes.plot_comparison, ["table", "params:compare"], "plot", name="plot"),
        ],
        namespace="compare",
        parameters={
            "params:compare",
            "params:training",
            "params:evaluation",
            "params:sequence_evaluation",
        },
    )
