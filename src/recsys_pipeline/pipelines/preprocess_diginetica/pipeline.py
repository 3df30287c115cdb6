"""The preprocessing template (`pipelines/preprocess`) in namespace `diginetica`."""

from kedro.pipeline import Pipeline

from recsys_pipeline.pipelines.preprocess.pipeline import for_dataset


def create_pipeline(**kwargs) -> Pipeline:
    """Raw diginetica files -> validated splits, statistics and TSV exports."""
    return for_dataset("diginetica")
