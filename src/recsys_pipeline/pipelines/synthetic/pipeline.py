"""``kedro run --pipelines=synthetic``: seeded raw data with a known sequential signal."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.synthetic.nodes import generate_raw


def create_pipeline(**kwargs) -> Pipeline:
    """One node: parameters -> ``synthetic.raw`` (Rees46-format files, versioned)."""
    return Pipeline([Node(generate_raw, "params:synthetic", "synthetic.raw", name="generate_raw")])
