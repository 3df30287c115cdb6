"""``kedro run --pipeline=tune``: Optuna search on train_tr -> train_valid, plots, and a final
retrain with the best parameters on train_full, evaluated on test like a normal training run.

The dataset is a runtime parameter (``--params=tune.dataset=<name>``), read by the parameters and by
the catalog entries ``tune.*``. Tags: ``tune_search`` (search and plots) and ``tune_final`` (the
final retrain); ``kedro run --pipeline=tune --tags=tune_search`` skips the retrain.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.tune import nodes

PARAMS = {"params:tune", "params:evaluation"}
FINAL_PARAMS = {*PARAMS, "params:sequence_evaluation"}


def create_pipeline(**kwargs) -> Pipeline:
    search = Pipeline(
        [
            Node(
                nodes.run_study,
                [
                    "train_tr",
                    "train_valid",
                    "storage",
                    "params:tune",
                    "parameters",
                    "params:evaluation",
                ],
                ["study", "best_params", "trials", "tracked_metrics"],
                name="search",
            ),
            Node(
                nodes.plot_study,
                "study",
                [
                    "optimization_history",
                    "param_importances",
                    "slice_plot",
                    "parallel_coordinate",
                ],
                name="report",
            ),
        ],
        tags=["tune_search"],
        namespace="tune",
        parameters=PARAMS,
    )
    final = Pipeline(
        [
            Node(
                nodes.final_params,
                ["best_params", "params:tune"],
                "final_params",
                name="final_params",
            ),
            Node(
                nodes.train_final,
                ["train_full", "train_valid", "final_params", "params:tune"],
                ["model", "history", "epoch_metrics"],
                name="final_train",
            ),
            Node(
                nodes.evaluate_final,
                [
                    "model",
                    "train_full",
                    "train_valid",
                    "test",
                    "params:evaluation",
                    "params:sequence_evaluation",
                    "params:tune",
                ],
                ["metrics", "final_tracked_metrics"],
                name="final_evaluate",
            ),
            Node(
                nodes.report_final,
                ["history", "metrics", "final_params", "params:sequence_evaluation", "params:tune"],
                ["loss_curve", "metrics_plot"],
                name="final_report",
            ),
            Node(
                nodes.final_model_card,
                [
                    "history",
                    "metrics",
                    "final_params",
                    "train_full",
                    "params:sequence_evaluation",
                    "params:tune",
                ],  # fmt: skip
                "model_card",
                name="final_model_card",
            ),
        ],
        tags=["tune_final"],
        namespace="tune",
        parameters=FINAL_PARAMS,
    )
    return search + final
