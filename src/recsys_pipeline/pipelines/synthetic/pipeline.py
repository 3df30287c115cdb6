"""``kedro run --pipelines=synthetic``: seeded raw data with a known sequential signal."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """One node: ``params:synthetic`` -> ``synthetic.raw`` (Rees46-format files, versioned)."""
    from recsys_pipeline.pipelines.synthetic.nodes import generate_raw

    return Pipeline(
        [Node(generate_raw, "params:synthetic", "raw", name="generate_raw")],
        namespace="synthetic",
        parameters={"params:synthetic"},
    )
