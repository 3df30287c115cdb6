"""GRU4Rec template (train -> evaluate -> report, and top-k), instantiated per dataset.

``kedro run --pipelines=train_gru4rec --namespaces=<dataset>`` trains on ``<dataset>.train_full``
with ``params:gru4rec.<dataset>`` and evaluates on ``<dataset>.test`` (kedro-viz demo pattern).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.preprocess.pipeline import DATASETS
from recsys_pipeline.pipelines.train_gru4rec import nodes


def template() -> Pipeline:
    """The generic training nodes, not yet bound to a dataset."""
    return Pipeline(
        [
            Node(
                nodes.train_gru4rec,
                ["train_full", "params:gru4rec"],
                ["gru4rec_model", "gru4rec_history", "gru4rec_epoch_metrics"],
                name="train",
            ),
            Node(
                nodes.evaluate_models,
                ["gru4rec_model", "train_full", "test", "params:evaluation"],
                ["gru4rec_metrics", "gru4rec_tracked_metrics"],
                name="evaluate",
            ),
            Node(
                nodes.plot_report,
                ["gru4rec_history", "gru4rec_metrics"],
                ["gru4rec_loss_curve", "gru4rec_metrics_plot"],
                name="report",
            ),
            Node(
                nodes.recommend_top_k,
                ["gru4rec_model", "test", "params:recommend"],
                "gru4rec_recommendations",
                name="recommend",
                tags=["recommend"],
            ),
        ]
    )


def for_dataset(dataset: str) -> Pipeline:
    """The template bound to ``dataset``'s splits and ``params:gru4rec.<dataset>``."""
    return Pipeline(
        template(),
        namespace=dataset,
        parameters={
            "params:gru4rec": f"params:gru4rec.{dataset}",
            "params:evaluation": "params:evaluation",
            "params:recommend": "params:recommend",
        },
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Every dataset; pick one with ``--namespaces=<dataset>``."""
    return sum((for_dataset(name) for name in (*DATASETS, "synthetic")), Pipeline([]))
