"""``preprocess_sequences``: user-sequence files -> validated leave-one-out splits, per dataset.

One namespace per dataset listed in ``conf/base/parameters_preprocess_sequences.yml``
(``preprocess_sequences.<dataset>``); catalog names ``<dataset>.sequences``,
``<dataset>.loo_train``, ``<dataset>.loo_valid``, ``<dataset>.loo_test``, ``<dataset>.items``
(the item catalogue the models rank),
``<dataset>.seq_raw_validation``, ``<dataset>.seq_validation_report``, ``<dataset>.seq_stats``.
``kedro run --pipelines=preprocess_sequences --namespaces=video`` runs one dataset.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.preprocess_sequences import nodes
from recsys_pipeline.pipelines.wiring import bind
from recsys_pipeline.reports.validation_page import validation_page

#: The datasets of conf/base/parameters_preprocess_sequences.yml (one namespace each).
DATASETS = (
    "video",
    "beauty",
    "s3rec_beauty",
    "s3rec_sports",
    "s3rec_toys",
    "ml100k",
    "ml1m",
    "synthetic_seq",
)
SPLITS = ("loo_train", "loo_valid", "loo_test")
PARAMS = "params:preprocess_sequences"


def template(dataset: str) -> Pipeline:
    """The nodes, not yet namespaced (the validation page names ``dataset``). ``unvalidated_*`` are memory datasets: nothing
    reaches disk before the split validation passed."""
    unvalidated = [f"unvalidated_{name}" for name in SPLITS]
    return Pipeline(
        [
            Node(nodes.ingest, PARAMS, "unvalidated_sequences", name="ingest"),
            Node(
                nodes.check_raw_schema,
                ["unvalidated_sequences", PARAMS],
                "unvalidated_seq_raw_validation",
                name="check_raw_schema",
            ),
            Node(
                nodes.split,
                ["unvalidated_sequences", PARAMS, "unvalidated_seq_raw_validation"],
                unvalidated,
                name="split",
            ),
            Node(
                nodes.item_table,
                ["unvalidated_loo_train", PARAMS],
                "unvalidated_items",
                name="item_table",
            ),
            Node(
                nodes.validate,
                [
                    "unvalidated_sequences",
                    *unvalidated,
                    "unvalidated_items",
                    "unvalidated_seq_raw_validation",
                    PARAMS,
                ],
                ["sequences", *SPLITS, "items", "seq_raw_validation", "seq_validation_report"],
                name="validate",
            ),
            Node(
                nodes.compute_stats,
                ["sequences", *SPLITS, "items", PARAMS],
                "seq_stats",
                name="compute_stats",
            ),
            Node(
                bind(validation_page, dataset=dataset),
                ["seq_raw_validation", "seq_validation_report"],
                "seq_validation_page",
                name="validation_page",
            ),
        ]
    )


def for_dataset(dataset: str) -> Pipeline:
    """The template in namespace ``dataset`` with ``params:preprocess_sequences.<dataset>``."""
    return Pipeline(
        template(dataset),
        namespace=dataset,
        parameters={PARAMS: f"{PARAMS}.{dataset}"},
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Every dataset (``--namespaces=<dataset>`` picks one; each needs its raw file)."""
    return sum((for_dataset(name) for name in DATASETS), Pipeline([]))
