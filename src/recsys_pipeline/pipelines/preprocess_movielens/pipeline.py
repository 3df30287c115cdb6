"""``preprocess_movielens``: MovieLens ratings -> NCF leave-last-out split with sampled negatives
(legacy, labelled ``ncf_*``) and the global time split (recommended, ``time_*``), validated.

Namespace ``movielens``: catalog names ``movielens.<artifact>``; parameters
``params:preprocess_movielens`` (``conf/base/parameters_preprocess_movielens.yml``).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.preprocess_movielens import nodes
from recsys_pipeline.pipelines.wiring import bind
from recsys_pipeline.reports.validation_page import validation_page

NCF = nodes.NCF_ARTIFACTS
TIME = nodes.TIME_ARTIFACTS
PARAMS = "params:preprocess_movielens"


def create_pipeline(**kwargs) -> Pipeline:
    """Raw ratings -> validated NCF and time splits, negatives, statistics."""
    unvalidated = [f"unvalidated_{name}" for name in NCF + TIME]
    return Pipeline(
        [
            Node(nodes.ingest, PARAMS, "ratings", name="ingest"),
            Node(
                nodes.check_raw_schema,
                ["ratings", PARAMS],
                "raw_validation",
                name="check_raw_schema",
            ),
            Node(
                nodes.ncf_split,
                ["ratings", PARAMS, "raw_validation"],
                unvalidated[: len(NCF)],
                name="ncf_split",
            ),
            Node(
                nodes.time_split,
                ["ratings", PARAMS, "raw_validation"],
                [*unvalidated[len(NCF) :], "time_cuts"],
                name="time_split",
            ),
            Node(
                nodes.validate,
                [*unvalidated, "time_cuts", PARAMS],
                [*NCF, *TIME, "validation_report"],
                name="validate",
            ),
            Node(
                nodes.compute_stats,
                ["ratings", *NCF, *TIME, "time_cuts", PARAMS],
                "stats",
                name="compute_stats",
            ),
            Node(
                bind(validation_page, dataset="movielens"),
                ["raw_validation", "validation_report"],
                "validation_page",
                name="validation_page",
            ),
        ],
        namespace="movielens",
        parameters={PARAMS: PARAMS},
    )
