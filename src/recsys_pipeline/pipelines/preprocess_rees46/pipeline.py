"""The preprocessing template (`pipelines/preprocess`) in namespace `rees46`."""

from kedro.pipeline import Pipeline

from recsys_pipeline.pipelines.preprocess.pipeline import for_dataset


def create_pipeline(**kwargs) -> Pipeline:
    """Raw rees46 files -> validated splits, statistics and TSV exports."""
    return for_dataset("rees46")
