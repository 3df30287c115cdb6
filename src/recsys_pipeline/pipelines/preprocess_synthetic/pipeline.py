"""The preprocessing template (`pipelines/preprocess`) in namespace `synthetic`."""

from kedro.pipeline import Pipeline

from recsys_pipeline.pipelines.preprocess.pipeline import for_dataset


def create_pipeline(**kwargs) -> Pipeline:
    """Raw synthetic files -> validated splits, statistics and TSV exports."""
    return for_dataset("synthetic")
