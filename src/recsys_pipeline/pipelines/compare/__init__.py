"""``kedro run --pipelines=compare``: every model of a dataset's task on one split, one table."""

from recsys_pipeline.pipelines.compare.pipeline import create_pipeline

__all__ = ["create_pipeline"]
