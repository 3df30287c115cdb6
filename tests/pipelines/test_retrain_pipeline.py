"""`kedro run --pipelines=retrain`: incoming files -> challenger -> champion/challenger, with
exactly-once ingestion, quarantine and the run lock (KedroSession, tmp project)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from recsys_pipeline.ingest import RetrainLockedError, read_manifest
from recsys_pipeline.synthetic import SyntheticConfig, write_raw
from tests.pipelines.conftest import catalog, run
from tests.pipelines.test_train_gru4rec_pipeline import TINY

RETRAIN = TINY | {"retrain": {"register_rejected": True}}


def _incoming(project: Path, start: str, seed: int) -> Path:
    folder = project / "data/01_raw/synthetic/incoming"
    config = SyntheticConfig(
        n_events=8000, n_items=300, n_users=800, start=start, n_days=4, seed=seed
    )
    tmp = project / f"tmp-{seed}"
    for path in write_raw("rees46", tmp, config):
        path.rename(folder / f"{start}-{path.name}") if folder.exists() else (
            folder.mkdir(parents=True),
            path.rename(folder / f"{start}-{path.name}"),
        )
    return folder


def test_retrain_promotes_then_fine_tunes_and_ingests_exactly_once(project: Path):
    run(project, "__default__", session={"runtime_params": TINY})
    folder = _incoming(project, "2019-12-01", seed=7)
    (folder / "broken.csv").write_text("not,a,rees46,file\n1,2,3,4\n")

    run(project, "retrain", session={"runtime_params": RETRAIN})
    cat = catalog(project)
    first = cat.load("retrain.decision")
    assert first["promote"] and first["reason"].startswith("first champion")
    assert first["champion"] is None and first["challenger_version"] == "1"
    # the corrupt file went to quarantine with a report; the good one was processed
    quarantine = project / "data/01_raw/synthetic/quarantine"
    assert (quarantine / "broken.csv").exists() and (quarantine / "broken.csv.report.json").exists()
    manifest = {e.name: e.status for e in read_manifest(folder.parent / "incoming_manifest.json")}
    assert manifest["broken.csv"] == "quarantined"
    assert [s for n, s in manifest.items() if n != "broken.csv"] == ["ingested"]

    # nothing new: the run stops with a clear message and changes nothing
    with pytest.raises(RuntimeError, match="no new files"):
        run(project, "retrain", session={"runtime_params": RETRAIN})

    # a later week arrives: the champion is fine-tuned on it and compared on its newest day
    _incoming(project, "2019-12-05", seed=8)
    run(project, "retrain", session={"runtime_params": RETRAIN})
    second = catalog(project).load("retrain.decision")
    assert second["champion_version"] == "1" and second["challenger_version"] == "2"
    assert second["champion"] is not None and second["baseline"] is not None
    client = mlflow.MlflowClient()
    alias = str(client.get_model_version_by_alias("synthetic_gru4rec", "champion").version)
    assert alias == ("2" if second["promote"] else "1"), second["reason"]
    model = catalog(project).load("retrain.challenger")
    assert model.history[-1].epoch == 2 * TINY["gru4rec"]["synthetic"]["n_epochs"]  # fine-tuned
    summary = catalog(project).load("retrain.ingest_summary")
    assert len(summary["files"]) == 1 and summary["window_events"] > 0


def test_a_second_run_at_the_same_time_is_refused(project: Path):
    lock = project / "data" / ".retrain.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from recsys_pipeline.ingest import RunLock\n"
            f"with RunLock({str(lock)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RetrainLockedError, match=f"pid {holder.pid}"):
            run(project, "retrain", session={"runtime_params": RETRAIN})
    finally:
        holder.kill()
        holder.wait()
    # the holder died: the lock is free again (the run now fails later, for lack of data)
    with pytest.raises(RuntimeError, match="no new files"):
        run(project, "retrain", session={"runtime_params": RETRAIN})


NEUMF_RETRAIN = {
    "retrain": {"dataset": "movielens", "model": "neumf", "ratings_variant": "ml-100k"},
    "neumf": {
        "factors": 8,
        "layers": [16, 8],
        "dropout": 0.0,
        "n_epochs": 20,  # 2 epochs do not beat the popularity baseline on these ratings
        "batch_size": 2048,
        "device": "cpu",
        "num_threads": 1,
    },
}


def _incoming_ratings(project: Path, start: int, seed: int) -> Path:
    from recsys_pipeline.synthetic_ratings import RatingsConfig, write_ratings

    folder = project / "data/01_raw/movielens/incoming"
    folder.mkdir(parents=True, exist_ok=True)
    config = RatingsConfig(
        n_users=300, n_items=300, n_ratings=15_000, start=start, span_days=21, seed=seed
    )
    path = write_ratings("ml-100k", project / f"tmp-ratings-{seed}", config)
    path.rename(folder / f"{start}-u.data")
    return folder


def _neumf_catalog(project: Path):
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, runtime_params=NEUMF_RETRAIN) as session:
        return session.load_context().catalog


def test_retrain_neumf_promotes_then_fine_tunes(project: Path):
    start = 874_724_710
    _incoming_ratings(project, start, seed=3)
    run(project, "retrain", session={"runtime_params": NEUMF_RETRAIN})
    first = _neumf_catalog(project).load("retrain.decision")
    assert first["promote"] and first["reason"].startswith("first champion"), first["reason"]
    assert first["champion"] is None and first["challenger_version"] == "1"
    assert first["model_name"] == "movielens_neumf"

    # a later batch: the NeuMF champion is fine-tuned on it and compared on its newest day
    _incoming_ratings(project, start + 21 * 86400, seed=4)
    run(project, "retrain", session={"runtime_params": NEUMF_RETRAIN})
    second = _neumf_catalog(project).load("retrain.decision")
    assert second["champion_version"] == "1", second
    assert second["champion"] is not None and second["baseline"] is not None
    client = mlflow.MlflowClient()
    alias = str(client.get_model_version_by_alias("movielens_neumf", "champion").version)
    expected = second["challenger_version"] if second["promote"] else "1"
    assert alias == expected, second["reason"]
    from recsys_pipeline.models.neumf import NeuMF

    model = _neumf_catalog(project).load("retrain.challenger")
    assert isinstance(model, NeuMF) and model.fine_tune_rounds  # fine-tuned, not from scratch
