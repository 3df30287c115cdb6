"""Preprocessing template (raw -> validated splits -> stats, TSV), instantiated per dataset.

``kedro run --pipelines=preprocess_<dataset>``; catalog names are ``<dataset>.<artifact>``
(``rees46.train_full``, ``diginetica.test``, ...), so a model pipeline consumes any dataset's
splits through one namespace.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.preprocess import nodes
from recsys_pipeline.pipelines.wiring import bind
from recsys_pipeline.reports.validation_page import validation_page

DATASETS = ("rees46", "yoochoose", "rsc15", "coveo", "retailrocket", "diginetica")
SPLITS = ("full", "train_full", "test", "train_tr", "train_valid")


def template(dataset: str) -> Pipeline:
    """The generic preprocessing nodes, not yet namespaced; reports and errors name ``dataset``
    (not its raw format: the generated data is in Rees46's format)."""
    return Pipeline(
        [
            Node(nodes.ingest, ["raw", "params:preprocess"], "events", name="ingest"),
            Node(
                bind(nodes.check_raw_schema, dataset=dataset),
                ["events", "params:preprocess"],
                "raw_validation",
                name="check_raw_schema",
            ),
            Node(
                nodes.sessionise,
                ["events", "params:preprocess", "raw_validation"],
                "sessions",
                name="sessionise",
            ),
            Node(
                nodes.remove_duplicates,
                ["sessions", "params:preprocess"],
                "deduplicated",
                name="remove_duplicates",
            ),
            Node(
                nodes.support_filter,
                ["deduplicated", "params:preprocess"],
                ["unvalidated_full", "filter_trace"],
                name="support_filter",
            ),
            Node(
                bind(nodes.split, dataset=dataset),
                ["unvalidated_full", "params:preprocess"],
                ["unvalidated_splits", "cuts"],
                name="split",
            ),
            Node(
                bind(nodes.validate, dataset=dataset),
                ["unvalidated_full", "unvalidated_splits", "cuts", "params:preprocess"],
                [*SPLITS, "validation_report"],
                name="validate",
            ),
            Node(
                bind(nodes.compute_stats, dataset=dataset),
                [*SPLITS, "filter_trace", "cuts", "params:preprocess"],
                "stats",
                name="compute_stats",
            ),
            Node(
                bind(validation_page, dataset=dataset),
                ["raw_validation", "validation_report"],
                "validation_page",
                name="validation_page",
            ),
            Node(nodes.export_tsv, list(SPLITS), [f"{s}_tsv" for s in SPLITS], name="export_tsv"),
        ]
    )


def for_dataset(dataset: str) -> Pipeline:
    """The template bound to ``dataset``: namespace and ``params:preprocess.<dataset>``."""
    return Pipeline(
        template(dataset),
        namespace=dataset,
        parameters={"params:preprocess": f"params:preprocess.{dataset}"},
    )


def create_pipeline(**kwargs) -> Pipeline:
    """All six public datasets (``kedro run --pipelines=preprocess`` needs all their raw files)."""
    return sum((for_dataset(name) for name in DATASETS), Pipeline([]))
