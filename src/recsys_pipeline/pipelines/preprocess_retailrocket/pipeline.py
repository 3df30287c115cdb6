"""The preprocessing template (`pipelines/preprocess`) in namespace `retailrocket`."""

from kedro.pipeline import Pipeline

from recsys_pipeline.pipelines.preprocess.pipeline import for_dataset


def create_pipeline(**kwargs) -> Pipeline:
    """Raw retailrocket files -> validated splits, statistics and TSV exports."""
    return for_dataset("retailrocket")
