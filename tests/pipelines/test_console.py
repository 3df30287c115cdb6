"""What a user sees: the default ``kedro run`` as a process whose output goes to a pipe (as in
CI or ``kedro run > log``): short, one line per message, no unactionable warning, Kedro's
bookkeeping hidden, and one summary at the end, whose serve command serves the trained model
straight from the run (``mlflow models serve -m runs:/<id>/gru4rec`` on loopback). Then the
notebook of ``notebooks/`` runs top to bottom on what that run wrote, as a user's kernel would
(in ``notebooks/``), so it cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import polars as pl
import pytest
import yaml
from mlflow import MlflowClient
from nbclient import NotebookClient

from tests.pipelines.conftest import ROOT
from tests.pipelines.test_train_gru4rec_pipeline import TINY
from tests.serving.test_serving import _post, _serve


@pytest.fixture(scope="module")
def default_run(shared_project: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``kedro run`` (TINY sizes) in a scratch project, once for this module's tests."""
    project = shared_project
    (project / "conf/local/parameters_tiny.yml").write_text(yaml.safe_dump(TINY))
    done = subprocess.run(
        [str(Path(sys.executable).with_name("kedro")), "run"],
        cwd=project,
        env=os.environ | {"KEDRO_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        text=True,
        check=False,
    )
    return project, done


def test_the_default_run_prints_a_short_console_that_ends_in_a_summary(
    default_run: tuple[Path, subprocess.CompletedProcess[str]],
):
    project, done = default_run
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    lines = output.splitlines()
    assert len(lines) <= 60, output
    # (the test project's absolute tracking URI, in the MLflow lines, is longer than a user's)
    assert max(len(line) for line in lines if str(project) not in line) <= 200, output
    for hidden in ("Loading data from", "Running node", "UserWarning", "Add type hints",
                   "Registering new custom resolver", "\x1b["):  # fmt: skip
        assert hidden not in output, hidden
    assert sum("epoch 1 --> loss" in line for line in lines) == 1  # one line per epoch
    assert output.count("== run summary") == 1
    summary = output[output.index("== run summary") :]
    assert "synthetic.gru4rec.metrics: every event after a session's first" in summary
    for model in ("gru4rec", "most_popular", "last_item_cooccurrence"):
        row = next(line for line in summary.splitlines() if line.startswith(model + " "))
        assert len(re.findall(r"\d\.\d{4}", row)) == 12  # recall, mrr, ndcg at 1, 5, 10, 20
    assert "synthetic.gru4rec.model" in summary and "data/06_models/synthetic/gru4rec/" in summary
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", summary)
    assert run_id and f"/runs/{run_id[1]}" in summary
    assert "mlflow ui --backend-store-uri" in summary and "export MLFLOW_TRACKING_URI=" in summary
    # the model the run logged is an MLflow model: served as the summary says
    serve = re.search(r"serve: mlflow models serve -m (runs:/[0-9a-f]{32}/gru4rec) ", summary)
    assert serve, summary
    test = pl.read_parquet(next(project.glob("data/05_model_input/synthetic/test.parquet/*/*")))
    session = test.filter(pl.col("SessionId") == test["SessionId"][0])["ItemId"].to_list()
    tracking = yaml.safe_load((project / "conf/local/mlflow.yml").read_text())
    uri = tracking["server"]["mlflow_tracking_uri"]
    # MLflow metric keys carry dataset and model; the epoch history has a step per epoch
    client = MlflowClient(tracking_uri=uri)
    metrics = client.get_run(serve[1].split("/")[1]).data.metrics
    assert 0 < metrics["synthetic.gru4rec.recall_at_20"] <= 1
    assert "synthetic.most_popular.recall_at_20" in metrics
    history = client.get_metric_history(serve[1].split("/")[1], "synthetic.gru4rec.loss")
    assert [m.step for m in history] == [1]  # TINY: one epoch
    # the training split is a dataset input of the run; the experiment is typed for training
    mlflow_run = client.get_run(serve[1].split("/")[1])
    inputs = {i.dataset.name: i for i in mlflow_run.inputs.dataset_inputs}
    train = inputs["synthetic.train_full"]
    assert {t.key: t.value for t in train.tags}["mlflow.data.context"] == "training"
    assert "train_full.parquet" in train.dataset.source
    experiment = client.get_experiment(mlflow_run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # the reports are artifacts of the run too: plots, metrics, statistics, validation, card
    logged = {a.path for folder in ("reports/synthetic", "reports/synthetic/gru4rec")
              for a in client.list_artifacts(mlflow_run.info.run_id, folder)}  # fmt: skip
    for name in ("gru4rec_loss_curve.png", "gru4rec_metrics.png", "gru4rec_metrics.json",
                 "gru4rec_history.json", "gru4rec_card.md"):  # fmt: skip
        assert f"reports/synthetic/gru4rec/{name}" in logged, logged
    for name in ("stats.json", "validation_report.json", "validation.md"):
        assert f"reports/synthetic/{name}" in logged, logged
    # the generated data is called synthetic in its reports (not rees46, its file format)
    [stats] = project.glob("data/08_reporting/synthetic/stats.json/*/stats.json")
    assert json.loads(stats.read_text())["dataset"] == "synthetic"
    [page] = project.glob("data/08_reporting/synthetic/validation.md/*/validation.md")
    assert page.read_text().startswith("# Data validation of synthetic: passed")
    # a model card next to the model, with the same version
    [card] = project.glob("data/06_models/synthetic/gru4rec_card.md/*/gru4rec_card.md")
    [model] = project.glob("data/06_models/synthetic/gru4rec/*")
    assert card.parent.name == model.name
    text = card.read_text()
    assert text.startswith("# Model card: GRU4Rec on synthetic")
    assert "| **gru4rec** |" in text and "most_popular" in text and "source commit" in text
    with _serve(serve[1], uri, project / "server.log") as base:
        status, body = _post(
            f"{base}/invocations",
            {"dataframe_records": [{"session": session}], "params": {"k": 5}},
        )
    assert status == 200, body
    [answer] = body["predictions"]
    assert len(answer["items"]) == 5 and answer["scores"] == sorted(answer["scores"], reverse=True)


def test_the_notebook_runs_on_what_the_default_run_wrote(
    default_run: tuple[Path, subprocess.CompletedProcess[str]],
):
    project, done = default_run
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    [path] = (ROOT / "notebooks").glob("*.ipynb")
    (project / "notebooks").mkdir(exist_ok=True)
    notebook = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        f"{path.name} is committed with outputs: clear them"
    )
    # the kernel starts in notebooks/, as under `kedro jupyter lab`
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(project / "notebooks")}},
    )  # fmt: skip
    client.execute()  # raises CellExecutionError naming the failing cell
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )  # fmt: skip
    assert "train_full:" in text and "sessions" in text
    assert "gru4rec-synthetic" in text  # this project's MLflow run, found from notebooks/
    assert any(
        "image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", [])
    )
    assert not (project / "notebooks" / "mlflow.db").exists()  # no stray store in notebooks/
