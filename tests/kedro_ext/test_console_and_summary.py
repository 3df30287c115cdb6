"""The console filter and handler (console.py) and the end-of-run summary's formatting
(run_summary.py)."""

from __future__ import annotations

import logging

import pytest
from kedro.logging import RichHandler

from recsys_pipeline.kedro_ext import run_summary as rs
from recsys_pipeline.kedro_ext.console import DropMessages, tidy_console


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_drop_messages_drops_unactionable_warnings_and_reset_loggers_below_their_level():
    drop = DropMessages(levels={"kedro_mlflow": logging.WARNING})
    assert not drop.filter(
        _record("py.warnings", 30, "\x1b[33mAdd type hints to the `predict` method")
    )
    assert not drop.filter(_record("kedro_mlflow.framework.hooks", 20, "Registering resolver"))
    assert drop.filter(_record("kedro_mlflow.framework.hooks", 30, "a real problem"))
    assert drop.filter(_record("kedro_mlflowish", 20, "another logger"))
    assert drop.filter(_record("recsys_pipeline", 20, "epoch 1 --> loss"))


def test_tidy_console_makes_plain_lines_off_a_terminal(monkeypatch: pytest.MonkeyPatch):
    root = logging.getLogger()
    rich = RichHandler()
    monkeypatch.setattr(root, "handlers", [rich])
    tidy_console(terminal=True)  # a terminal keeps Kedro's handler, with the filter
    assert root.handlers == [rich] and any(isinstance(f, DropMessages) for f in rich.filters)
    tidy_console(terminal=False)
    [plain] = root.handlers
    assert isinstance(plain, logging.StreamHandler) and not isinstance(plain, RichHandler)
    assert any(isinstance(f, DropMessages) for f in plain.filters)
    text = plain.format(_record("recsys_pipeline", 20, "epoch 1 --> loss: 5.0"))
    assert text.endswith("INFO    epoch 1 --> loss: 5.0") and "\n" not in text


def test_metrics_table_names_the_protocol_and_shows_every_cutoff():
    metrics = {
        "sasrec": {"full_hist_excluded.recall@10": 0.5, "full_hist_excluded.ndcg@10": 0.25,
                   "full_hist_excluded.recall@1": 0.1, "full_hist_excluded.n_targets": 943.0,
                   "legacy.sampled100_hr@10": 0.9},
        "most_popular": {"full_hist_excluded.recall@10": 0.2, "full_hist_excluded.ndcg@10": 0.1,
                         "full_hist_excluded.recall@1": 0.0, "full_hist_excluded.n_targets": 943.0},
    }  # fmt: skip
    lines = rs.metrics_table("ml100k.sasrec.metrics", metrics)
    assert lines[0] == (
        "ml100k.sasrec.metrics: each user's last item, full ranking, the user's history excluded"
    )
    assert lines[1].split() == ["recall@1", "recall@10", "ndcg@10", "targets"]
    assert lines[2].split() == ["sasrec", "0.1000", "0.5000", "0.2500", "943"]
    assert rs.metrics_table("x", {"model": {"loss": 1.0}}) == []
    assert rs.is_metrics_output("synthetic.gru4rec.metrics")
    assert rs.is_metrics_output("movielens.neumf_time_metrics")
    assert not rs.is_metrics_output("synthetic.gru4rec.tracked_metrics")
    assert not rs.is_metrics_output("tune.final_tracked_metrics")


def test_comparison_metrics_take_the_first_protocol_and_keep_failed_models():
    table = {
        "protocols": {"sessions": "full ranking, mode=standard"},
        "models": [
            {"model": "gru4rec", "metrics": {"sessions": {"recall@20": 0.7, "n_targets": 10.0}}},
            {"model": "sasrec", "metrics": {}},
        ],
    }
    metrics, words = rs.comparison_metrics(table)
    assert words == "sessions: full ranking, mode=standard"
    lines = rs.metrics_table("compare.table", metrics, words)
    assert lines[2].split() == ["gru4rec", "0.7000", "10"]
    assert lines[3].split() == ["sasrec", "-"]  # a failed model: its row is there, empty


def test_artifact_lines_put_models_and_reports_first_and_count_the_rest():
    paths = [(f"d.split{i}", f"data/05/split{i}.parquet") for i in range(12)]
    paths.append(("d.gru4rec.model", "data/06_models/d/gru4rec/v/gru4rec"))
    paths.append(("d.gru4rec.loss_curve", "data/08_reporting/d/loss.png/v/loss.png"))
    lines = rs.artifact_lines(paths, limit=4)
    assert lines[1].split()[0] == "d.gru4rec.model"
    assert lines[2].split()[0] == "d.gru4rec.loss_curve"
    assert lines[-1] == "  ... and 10 more outputs of this run under data/"
    assert rs.mlflow_lines(None, None, None) == []
    lines = rs.mlflow_lines("abc", "1", "sqlite:///mlflow.db", models=["gru4rec"])
    assert lines[1] == "  export MLFLOW_TRACKING_URI=sqlite:///mlflow.db"
    assert lines[3] == "  page:  http://127.0.0.1:5000/#/experiments/1/runs/abc"
    assert lines[4].startswith("  serve: mlflow models serve -m runs:/abc/gru4rec --env-manager")
