"""`kedro run --pipelines=replay` on the tiny default run's data (KedroSession, tmp project)."""

from __future__ import annotations

from pathlib import Path

from tests.pipelines.conftest import catalog, run
from tests.pipelines.test_train_gru4rec_pipeline import TINY


def test_replay_writes_per_day_metrics_averages_and_plot(project: Path):
    run(project, "__default__", session={"runtime_params": TINY})
    run(project, "replay", session={"runtime_params": TINY | {"replay": {"n_eval_days": 3}}})
    cat = catalog(project)
    table = cat.load("replay.table")
    assert table.height == 3 and table["day"].is_sorted()
    summary = cat.load("replay.summary")
    mean = sum(table["gru4rec/mrr@20"]) / 3
    assert abs(summary["mean"]["gru4rec/mrr@20"] - mean) < 1e-9
    assert list((project / "data/08_reporting/replay/synthetic").glob("per_day.png/*/per_day.png"))
    # Transformers4Rec's protocol through the same pipeline: last item of each test-half
    # session; two models ("+": --params allows no comma in a value), one table and plot
    t4rec = {"n_eval_days": 2, "protocol": "t4rec", "metric": "ndcg@20", "model": "gru4rec+sasrec"}
    sasrec = {"sasrec": {"synthetic": {"num_epochs": 1, "hidden_units": 16}}}
    run(project, "replay", session={"runtime_params": TINY | sasrec | {"replay": t4rec}})
    table = catalog(project).load("replay.table")
    assert table.height == 2 and {"gru4rec/ndcg@20", "sasrec/ndcg@20"} <= set(table.columns)
    assert (table["n_valid_sessions"] > 0).all()
    assert (table["sasrec/n_targets"] == table["gru4rec/n_targets"]).all()
    summary = catalog(project).load("replay.summary")
    assert summary["models"][:2] == ["gru4rec", "sasrec"]
    assert summary["config"]["params"]["sasrec"]["num_epochs"] == 1
