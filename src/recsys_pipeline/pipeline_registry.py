"""Project pipelines: the names users type."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from recsys_pipeline.pipelines.preprocess.pipeline import DATASETS, for_dataset


def register_pipelines() -> dict[str, Pipeline]:
    """``preprocess_<dataset>`` per public dataset, ``synthetic``, and the default main job.

    ``__default__`` (plain ``kedro run``): synthetic raw data -> preprocess -> validate -> report.
    """
    pipelines = find_pipelines(raise_errors=True)
    for name in DATASETS:
        pipelines[f"preprocess_{name}"] = for_dataset(name)
    pipelines["preprocess_synthetic"] = for_dataset("synthetic")
    pipelines["__default__"] = pipelines["synthetic"] + pipelines["preprocess_synthetic"]
    return pipelines
