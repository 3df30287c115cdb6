"""``kedro run --pipelines=synthetic``: seeded raw data with a known sequential signal (session
events for the default pipeline, user sequences for ``preprocess_sequences``)."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """``params:synthetic`` -> ``synthetic.raw`` (Rees46-format files, versioned) and
    ``params:synthetic_sequences`` -> ``synthetic.sequences_raw`` (pairs file)."""
    from recsys_pipeline.pipelines.synthetic.nodes import generate_raw, generate_sequences_raw

    return Pipeline(
        [
            Node(generate_raw, "params:synthetic", "raw", name="generate_raw"),
            Node(
                generate_sequences_raw,
                "params:synthetic_sequences",
                "sequences_raw",
                name="generate_sequences_raw",
            ),
        ],
        namespace="synthetic",
        parameters={"params:synthetic", "params:synthetic_sequences"},
    )
