"""``kedro run --pipeline=tune`` end to end on tiny synthetic data (KedroSession, tmp project)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from recsys_pipeline.tuning import SpaceError, TuningError
from tests.pipelines.conftest import catalog, run
from tests.pipelines.test_train_gru4rec_pipeline import TINY

SPACE = (
    '{"name": "layers", "dtype": "int", "low": 16, "high": 48, "step": 16}\n'
    '{"name": "learning_rate", "dtype": "float", "low": 0.05, "high": 0.2, "step": 0.05}\n'
)


def _tune_params(project: Path, **tune) -> dict:
    space = project / "space.json"
    space.write_text(SPACE)
    settings = {
        "space": str(space),
        "n_trials": 3,
        "fixed": {"n_epochs": 2, "n_sample": 64, "batch_size": 32},
        "pruner": "none",
        "num_threads": 1,
        "sampler_seed": 1,
        "study_name": f"tiny-{project.name}",  # unique: MLflow runs are found by it
    } | tune
    return TINY | {"tune": settings}


@pytest.fixture
def prepared(project: Path) -> Path:
    """The tiny default run: synthetic splits (and a GRU4Rec) in the project."""
    run(project, "__default__", session={"runtime_params": TINY})
    return project


def test_tune_searches_reports_resumes_and_retrains(prepared: Path):
    project = prepared
    run(project, "tune", session={"runtime_params": _tune_params(project)})
    cat = catalog(project)
    best = cat.load("tune.best_params")
    assert best["trials"] == {"COMPLETE": 3} and best["trials_run_here"] == 3
    assert best["metric"] == "mrr@20" and 0 < best["value"] <= 1
    assert best["model_params"]["layers"] == [best["params"]["layers"]]
    study = cat.load("tune.study")  # the versioned snapshot
    assert len(study.trials) == 3 and study.best_value == pytest.approx(best["value"])
    trials = cat.load("tune.trials")
    assert trials["state"].to_list() == ["COMPLETE"] * 3
    assert trials["epochs_reported"].to_list() == [2, 2, 2]  # a value per epoch (for pruning)
    reports = project / "data/08_reporting/tune/synthetic"
    for name in ("optimization_history", "param_importances", "slice", "parallel_coordinate"):
        figure = json.loads(next(reports.glob(f"{name}.json/*/{name}.json")).read_text())
        assert figure["data"] or figure["layout"]["annotations"], name
    # the final retrain on train_full, evaluated on test like a normal training run
    metrics = cat.load("tune.metrics")
    assert set(metrics) == {"gru4rec", "most_popular", "last_item_cooccurrence"}
    assert {"recall@1", "recall@5", "recall@10", "recall@20"} <= set(metrics["gru4rec"])
    assert cat.load("tune.final_params")["learning_rate"] == best["params"]["learning_rate"]
    model = cat.load("tune.model")
    assert model.params.layers == [best["params"]["layers"]]
    # every trial is a nested MLflow run with per-epoch values
    # (kedro-mlflow keeps the first tracking URI of this test process: search where it logged)
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`optuna.study` = '{best['study_name']}'",
    )
    assert len(runs) == 3 and runs["tags.mlflow.parentRunId"].notna().all()
    assert runs["metrics.final_mrr_at_20"].notna().all()

    # again with n_trials=4: the study continues, exactly one more trial
    run(project, "tune", session={"runtime_params": _tune_params(project, n_trials=4)})
    best = catalog(project).load("tune.best_params")
    assert best["trials"] == {"COMPLETE": 4} and best["trials_run_here"] == 1

    # search only (the final retrain switched off by tag)
    run(
        project,
        "tune",
        tags=["tune_search"],
        session={"runtime_params": _tune_params(project, n_trials=4)},
    )


def _runs_nothing(project: Path, error, match: str, **tune) -> None:
    with pytest.raises(error, match=match):
        run(project, "tune", session={"runtime_params": _tune_params(project, **tune)})
    assert not (project / "data/07_model_output/tune/synthetic").exists()


def test_bad_settings_fail_before_any_training(prepared: Path):
    project = prepared
    _runs_nothing(project, TuningError, "unknown GRU4Rec parameter", fixed={"n_epoch": 2})
    _runs_nothing(project, TuningError, "unknown tune setting", n_trails=2)
    bad_space = project / "bad.json"
    bad_space.write_text('{"name": "layerz", "dtype": "int", "low": 1, "high": 2}')
    _runs_nothing(project, SpaceError, "unknown parameter 'layerz'", space=str(bad_space))
    (project / "conf/local/catalog.yml").write_text(
        "tune.storage:\n"
        "  type: recsys_pipeline.kedro_ext.datasets.OptunaStorageDataset\n"
        "  credentials: optuna_storage\n"
    )
    (project / "conf/local/credentials.yml").write_text(
        "optuna_storage:\n  url: postgresql+psycopg://optuna:hunter2@127.0.0.1:9/optuna\n"
    )
    _runs_nothing(project, TuningError, "cannot open the Optuna storage")


def test_tune_a_user_item_model_on_the_movielens_time_split(project: Path):
    """``tune.model=neumf``: trials scored with the user-based full ranking on time_valid
    (training items left out), the best configuration retrained on time_train and evaluated on
    time_test next to popularity and co-occurrence."""
    from recsys_pipeline.synthetic.ratings import RatingsConfig, write_ratings

    raw = project / "data" / "01_raw" / "movielens"
    write_ratings("ml-100k", raw, RatingsConfig(n_users=150, n_items=200, n_ratings=6_000, seed=5))
    run(project, "preprocess_movielens")
    space = project / "neumf_space.json"
    space.write_text(
        '{"name": "factors", "dtype": "int", "low": 4, "high": 8, "step": 4}\n'
        '{"name": "learning_rate", "dtype": "float", "low": 0.001, "high": 0.01, "log": true}\n'
    )
    splits = {
        "train": "time_train",
        "valid": "time_valid",
        "full": "time_train",
        "test": "time_test",
    }
    tune = {
        "dataset": "movielens",
        "model": "neumf",
        "space": str(space),
        "splits": splits,
        "n_trials": 2,
        "fixed": {"layers": [16, 8], "n_epochs": 2, "batch_size": 2048, "device": "cpu"},
        "pruner": "none",
        "num_threads": 1,
        "sampler_seed": 1,
        "study_name": f"neumf-{project.name}",
    }
    run(project, "tune", session={"runtime_params": {"tune": tune}})
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, runtime_params={"tune": tune}) as session:
        cat = session.load_context().catalog  # tune.* paths follow the runtime parameters
    best = cat.load("tune.best_params")
    assert best["model"] == "neumf" and best["trials"] == {"COMPLETE": 2}
    assert best["metric"] == "mrr@20" and 0 < best["value"] <= 1
    assert best["model_params"]["factors"] == best["params"]["factors"]
    assert cat.load("tune.trials")["epochs_reported"].to_list() == [2, 2]
    metrics = cat.load("tune.metrics")
    assert set(metrics) == {"neumf", "popularity", "cooccurrence"}
    assert metrics["neumf"]["n_targets"] == metrics["popularity"]["n_targets"] > 0
    model = cat.load("tune.model")
    assert model.task == "user_item" and model.params.factors == best["params"]["factors"]
    folder = next((project / "data/06_models/movielens/neumf_tuned").glob("*/neumf_tuned"))
    assert json.loads((folder / "model.json").read_text())["kind"] == "neumf"
