"""The MLflow run of a ``kedro run`` is named after what it trains and tagged with dataset,
model, pipeline and runner (hooks.MlflowRunTagsHook)."""

from __future__ import annotations

from pathlib import Path

import mlflow

from recsys_pipeline.hooks import run_identity
from tests.pipelines.conftest import run


def test_run_identity_from_pipelines_and_namespaces() -> None:
    one = run_identity(["train"], ["synthetic.gru4rec", "synthetic.gru4rec", ""])
    assert one == {"run_name": "gru4rec-synthetic", "pipeline": "train", "dataset": "synthetic",
                   "model": "gru4rec"}  # fmt: skip
    many = run_identity(["train"], ["synthetic.gru4rec", "synthetic_seq.sasrec"])
    assert many["run_name"] == "train:synthetic,synthetic_seq"
    assert many["model"] == "gru4rec,sasrec"
    assert run_identity([], [""]) == {"run_name": "__default__", "pipeline": "__default__"}


def test_a_run_is_named_and_tagged(project: Path) -> None:
    run(project, "synthetic", node_names=["synthetic.generate_sequences_raw"],
        session={"runtime_params": {"synthetic_sequences": {"n_users": 50, "n_items": 40}}})  # fmt: skip
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1, runs
    row = runs.iloc[0]
    assert row["tags.mlflow.runName"] == "synthetic:synthetic"
    assert row["tags.dataset"] == "synthetic" and row["tags.pipeline"] == "synthetic"
    assert row["tags.runner"] == "SequentialRunner"


def test_runner_name_from_kedro_run_params() -> None:
    from recsys_pipeline.hooks import runner_name

    assert runner_name("<kedro.runner.sequential_runner.SequentialRunner object at 0x7f3>") == (
        "SequentialRunner"
    )
    assert runner_name("None") == runner_name(None) == "SequentialRunner"
    assert runner_name("ParallelRunner") == "ParallelRunner"
