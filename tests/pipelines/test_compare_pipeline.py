"""``kedro run --pipelines=compare`` end to end (KedroSession, tmp project): the default
configuration on the default run's data (generated smaller), a failing model, a user-sequence
dataset, and the checks made before any training."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import polars as pl
import pytest

from recsys_pipeline.models.sasrec import SASRec
from recsys_pipeline.pipelines.compare.nodes import CompareError, chosen_models
from recsys_pipeline.pipelines.compare.splits import compare_split, task
from tests.pipelines.conftest import catalog, run
from tests.pipelines.test_train_gru4rec_pipeline import TINY
from tests.pipelines.test_train_sequences_pipeline import SMALL

NEXT_ITEM = ["bert4rec", "gru4rec", "hstu", "sasrec", "xlnet_mlm"]


@pytest.fixture(scope="module")
def prepared(shared_project: Path) -> Path:
    """The default run's generated data (smaller), preprocessed, in a project shared by the
    module; the synthetic user sequences too."""
    run(shared_project, "synthetic", session={"runtime_params": TINY | SMALL})
    run(shared_project, "preprocess_synthetic", session={"runtime_params": TINY})
    run(shared_project, "preprocess_sequences", namespaces=["synthetic_seq"],
        session={"runtime_params": SMALL})  # fmt: skip
    return shared_project


def _runs(tag: str, value: str):
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return [r for r in runs if r.data.tags.get(tag) == value]


def _latest(project: Path, dataset: str, name: str) -> Path:
    return sorted((project / "data/08_reporting/compare" / dataset / name).glob(f"*/{name}"))[-1]


def test_default_compare_ranks_every_next_item_model_and_the_baselines(prepared: Path, capsys):
    """The default configuration (every registered next-item model with its ``synthetic``
    block) on the generated sessions: one table, markdown, plot and MLflow run tree, and the
    run's summary on the console."""
    run(prepared, "compare", session={"runtime_params": TINY})
    summary = capsys.readouterr().out
    assert summary.count("== run summary") == 1 and "compare.table: sessions: " in summary
    assert "data/08_reporting/compare/synthetic/comparison.md" in summary
    table = catalog(prepared).load("compare.table")
    rows = {r["model"]: r for r in table["models"]}
    assert list(rows) == ["most_popular", "last_item_cooccurrence", *NEXT_ITEM]
    assert table["task"] == "next_item" and table["splits"]["train"] == "train_full"
    assert list(table["protocols"]) == ["sessions"]
    assert "full ranking" in table["protocols"]["sessions"]
    targets = {r["metrics"]["sessions"]["n_targets"] for r in rows.values()}
    assert len(targets) == 1 and targets.pop() > 0  # one test, the same targets for all
    for row in rows.values():
        assert row["status"] == "ok" and row["error"] is None, row
        values = row["metrics"]["sessions"]
        for k in (1, 5, 10, 20):
            assert 0 <= values[f"mrr@{k}"] <= values[f"ndcg@{k}"] <= values[f"recall@{k}"] <= 1
        assert row["peak_rss_mib"] > 0 and row["eval_seconds"] >= 0
    for kind in NEXT_ITEM:  # the synthetic blocks: 3 epochs each (TINY's GRU4Rec: 1)
        epochs = 1 if kind == "gru4rec" else 3
        assert rows[kind]["epochs"] == epochs and rows[kind]["train_seconds"] > 0
        assert rows[kind]["targets_per_s"] > 0
        assert [h["epoch"] for h in rows[kind]["history"]] == list(range(1, epochs + 1))
    # better than chance: GRU4Rec beats the most-popular baseline on the Markov sessions
    assert (
        rows["gru4rec"]["metrics"]["sessions"]["recall@20"]
        > (rows["most_popular"]["metrics"]["sessions"]["recall@20"])
    )
    report = _latest(prepared, "synthetic", "comparison.md").read_text()
    assert "## sessions: " in report
    assert "| model | recall@1 |" in report and "| hstu | ok | 3 |" in report
    assert _latest(prepared, "synthetic", "comparison.png").stat().st_size > 10_000
    # one parent run (the pipeline's) and a nested run per model
    children = [r for r in _runs("pipeline", "compare") if r.data.tags.get("model")]
    names = {r.info.run_name for r in children if r.data.tags.get("dataset") == "synthetic"}
    assert {f"{m}-synthetic" for m in rows} <= names
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(parents) == 1
    parent = mlflow.get_run(parents.pop())
    assert parent.data.metrics["compare.synthetic.gru4rec.sessions.recall_at_20"] == (
        pytest.approx(rows["gru4rec"]["metrics"]["sessions"]["recall@20"])
    )


def test_a_failing_model_is_a_row_and_the_others_still_run(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
):
    def broken(self, *args, **kwargs):
        raise RuntimeError("diverged at epoch 1")

    monkeypatch.setattr(SASRec, "fit", broken)
    params = TINY | {"compare": {"models": ["sasrec", "gru4rec"], "baselines": False}}
    run(prepared, "compare", session={"runtime_params": params})
    table = catalog(prepared).load("compare.table")
    rows = {r["model"]: r for r in table["models"]}
    assert list(rows) == ["sasrec", "gru4rec"]
    assert rows["sasrec"]["status"] == "failed"
    assert rows["sasrec"]["error"] == "RuntimeError: diverged at epoch 1"
    assert rows["sasrec"]["metrics"] == {} and rows["gru4rec"]["status"] == "ok"
    assert rows["gru4rec"]["metrics"]["sessions"]["recall@20"] > 0
    report = _latest(prepared, "synthetic", "comparison.md").read_text()
    assert "| sasrec | failed: RuntimeError: diverged at epoch 1 |" in report
    failed = [r for r in _runs("model", "sasrec") if r.data.tags.get("status") == "failed"]
    assert failed and failed[-1].info.status == "FAILED"


def test_compare_on_user_sequences_reports_every_protocol(prepared: Path):
    params = SMALL | {
        "compare": {
            "dataset": "synthetic_seq",
            "models": "sasrec+hstu",  # as --params writes a list (no comma inside a value)
            "overrides": {"sasrec": {"num_epochs": 1}, "hstu": {"num_epochs": 1}},
        }
    }
    run(prepared, "compare", session={"runtime_params": params})
    table = json.loads(_latest(prepared, "synthetic_seq", "comparison.json").read_text())
    assert table["splits"] == {"train": "loo_train", "valid": "loo_valid", "test": "loo_test",
                               "items": "items"}  # fmt: skip
    (train_file,) = (prepared / "data/05_model_input/synthetic_seq").glob("loo_train.parquet/*/*")
    train_items = pl.read_parquet(train_file).get_column("ItemId").n_unique()
    assert table["rows_in_splits"]["items"] == train_items  # no catalog file: loo_train's items
    assert list(table["protocols"]) == [
        "full_hist_excluded", "full_hist_included", "legacy", "gr",
    ]  # fmt: skip
    assert "history excluded" in table["protocols"]["full_hist_excluded"]
    assert "capped" in table["protocols"]["gr"]
    rows = {r["model"]: r for r in table["models"]}
    assert list(rows) == ["most_popular", "last_item_cooccurrence", "sasrec", "hstu"]
    for kind in ("sasrec", "hstu"):
        assert rows[kind]["status"] == "ok" and rows[kind]["epochs"] == 1
        assert 0 < rows[kind]["metrics"]["full_hist_excluded"]["ndcg@10"] <= 1
        assert "mrr_exact" in rows[kind]["metrics"]["gr"]


@pytest.mark.parametrize(
    ("compare", "message"),
    [
        ({"models": ["sasrec", "nope"]}, "unknown model 'nope'"),
        ({"models": ["neumf"]}, "'neumf' is a user_item model; 'synthetic' needs next_item"),
        ({"modles": ["sasrec"]}, "unknown compare setting(s) ['modles']"),
        ({"models": ["sasrec"], "overrides": {"hstu": {}}}, "compare.overrides.hstu"),
    ],
)
def test_settings_are_checked_before_any_training(compare: dict, message: str):
    parameters = {k: {"defaults": {}} for k in ("sasrec", "hstu", "neumf")}
    with pytest.raises(CompareError) as err:
        chosen_models({"dataset": "synthetic"} | compare, parameters)
    assert message in str(err.value)


def test_the_split_files_and_task_follow_the_dataset():
    assert [compare_split("beauty", r) for r in ("train", "valid", "test")] == [
        "loo_train", "loo_valid", "loo_test",
    ]  # fmt: skip
    assert compare_split("diginetica", "valid") == "train_valid"
    assert compare_split("movielens", "test") == "time_test" and task("movielens") == "user_item"
    assert task("synthetic_seq") == "next_item"
    with pytest.raises(ValueError, match="role"):
        compare_split("beauty", "holdout")
