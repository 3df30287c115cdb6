"""Two `kedro run --pipeline=tune` workers share one study on a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from tests.pipelines.conftest import run
from tests.pipelines.test_train_gru4rec_pipeline import TINY
from tests.tuning.postgres import postgres_server, why_unavailable

REASON = why_unavailable()
KEDRO = str(Path(sys.executable).with_name("kedro"))
N_TRIALS = 6


@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_two_workers_share_one_postgres_study(project: Path):
    run(project, "__default__", session={"runtime_params": TINY})  # the synthetic splits
    space = project / "space.json"
    space.write_text(
        '{"name": "layers", "dtype": "int", "low": 16, "high": 64, "step": 8}\n'
        '{"name": "learning_rate", "dtype": "float", "low": 0.02, "high": 0.2, "step": 0.005}\n'
        '{"name": "momentum", "dtype": "float", "low": 0.0, "high": 0.5, "step": 0.05}\n'
    )
    # MLflow's SQLite store: created once here, as two processes creating it at the same moment
    # race on its schema and experiment (README: use an MLflow server for many machines)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    if client.get_experiment_by_name("recsys_pipeline") is None:  # conf/base/mlflow.yml
        client.create_experiment("recsys_pipeline")
    with postgres_server() as url:
        # the documented setup: the URL comes from conf/local/credentials.yml
        (project / "conf/local/catalog.yml").write_text(
            "tune.storage:\n"
            "  type: recsys_pipeline.kedro_ext.datasets.OptunaStorageDataset\n"
            "  credentials: optuna_storage\n"
        )
        (project / "conf/local/credentials.yml").write_text(f"optuna_storage:\n  url: {url}\n")
        params = (
            f"tune.n_trials={N_TRIALS},tune.space={space},tune.num_threads=1,"
            "tune.fixed.n_epochs=1,tune.fixed.n_sample=64,tune.fixed.batch_size=32,"
            "tune.pruner=none,tune.study_name=distributed"
        )
        command = [KEDRO, "run", "--pipeline=tune", "--tags=tune_search", f"--params={params}"]
        env = os.environ | {"KEDRO_DISABLE_TELEMETRY": "true"}
        workers = [
            subprocess.Popen(
                command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            for _ in range(2)
        ]
        outputs = [w.communicate(timeout=600)[0].decode() for w in workers]
        for worker, output in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, output[-4000:]
        study = optuna.load_study(study_name="distributed", storage=url)
        trials = study.get_trials()
        best = study.best_value
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # each worker checks the count before its last trial: at most one extra trial per worker
    assert N_TRIALS <= len(complete) <= N_TRIALS + 1
    assert len({t.number for t in trials}) == len(trials)  # no trial ran twice
    # every trial was run by exactly one worker: one MLflow trial run per trial number
    runs = client.search_runs(
        [client.get_experiment_by_name("recsys_pipeline").experiment_id],
        filter_string="tags.`optuna.study` = 'distributed'",
    )
    run_trials = sorted(int(r.data.tags["optuna.trial"]) for r in runs)
    assert run_trials == sorted(t.number for t in trials)
    workers_seen = {t.user_attrs["worker"] for t in complete}
    assert len(workers_seen) == 2, workers_seen  # both did work
    print(  # noqa: T201 - the figures for the closing note (pytest -s)
        f"{len(complete)} complete trials on PostgreSQL from workers {sorted(workers_seen)}; "
        f"best mrr@20 {best:.4f}"
    )
