"""``kedro run --pipelines=replay --params=replay.dataset=<name>``: day-by-day replay (train on the
past, evaluate on the next day, fine-tune on it, ...), per-day metrics and a plot in 08_reporting."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from recsys_pipeline.pipelines.replay import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.run_replay,
                ["events", "params:replay", "parameters"],
                ["table", "summary", "plot"],
                name="run",
            )
        ],
        namespace="replay",
        parameters={"params:replay"},
    )
