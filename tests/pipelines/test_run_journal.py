"""A failed, interrupted or killed run leaves no new version (hooks.RunJournalHook), and empty
splits are an error naming the dataset, the split and the cut."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from recsys_pipeline.hooks import JOURNAL_DIR, recover_killed_runs
from recsys_pipeline.preprocessing.protocol import EmptySplitError
from recsys_pipeline.synthetic.sessions import SyntheticConfig, write_raw
from tests.pipelines.conftest import catalog, run

SMALL = SyntheticConfig(n_events=20_000, n_items=300, n_users=2_000, seed=5)


def _snapshot(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (size for files, -1 for folders)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1)
        for p in sorted(root.rglob("*"))
    }


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _big_gzip_raw(raw: Path, repeats: int) -> str:
    """Synthetic Diginetica raw data in ``raw``, plus ``<file>.gz`` holding its rows
    ``repeats`` times (a slow decompression); the plain file's name."""
    import gzip

    write_raw("diginetica", raw, SMALL)
    (name,) = [p.name for p in raw.iterdir()]
    header, body = (raw / name).read_bytes().split(b"\n", 1)
    with gzip.open(raw / f"{name}.gz", "wb", compresslevel=1) as dst:
        dst.write(header + b"\n")
        for _ in range(repeats):
            dst.write(body)
    return name


def test_three_views_in_one_hour_fail_naming_dataset_split_and_cut(project: Path):
    """The issue's RetailRocket example: the run fails at split, names what to change, and
    ``data/`` holds what it held before (nothing of the events, sessions, ... steps)."""
    raw = project / "data/01_raw/retailrocket"
    raw.mkdir(parents=True)
    (raw / "events.csv").write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1442545000000,1,view,5,\n1442545100000,1,view,6,\n1442545200000,1,view,7,\n"
    )
    before = _snapshot(project / "data")
    with pytest.raises(EmptySplitError) as err:
        run(project, "preprocess_retailrocket", session={"runtime_params": {
            "preprocess": {"retailrocket": {"min_item_support": 1}}}})  # fmt: skip
    message = str(err.value)
    for part in ("'retailrocket'", "'train_full' has 0 sessions", "test cut 2015-09-11T03:00",
                 "fixed_tsplit=1442545200000", "n_test_days=7", "min_split_sessions"):  # fmt: skip
        assert part in message, (part, message)
    assert _snapshot(project / "data") == before


def test_a_failed_run_keeps_latest_and_the_next_run_succeeds(project: Path, monkeypatch):
    """A run that succeeded, then one that fails at split: every artifact's latest version is
    the first run's again, no folder of the failed run is left; a third run succeeds."""
    from recsys_pipeline.preprocessing import protocol

    write_raw("diginetica", project / "data/01_raw/diginetica", SMALL)
    run(project, "preprocess_diginetica")
    before = _snapshot(project / "data")
    first_test = catalog(project).load("diginetica.test")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in split")

    monkeypatch.setattr(protocol, "protocol_splits", broken)
    with pytest.raises(RuntimeError, match="a bug in split"):
        run(project, "preprocess_diginetica")
    assert _snapshot(project / "data") == before
    assert catalog(project).load("diginetica.test").equals(first_test)
    monkeypatch.undo()
    run(project, "preprocess_diginetica")
    assert len(list((project / "data/05_model_input/diginetica/test.parquet").iterdir())) == 2


def test_the_next_run_rolls_back_a_killed_run(project: Path):
    """What SIGKILL leaves (a journal with a dead pid, its version folders, partial files of
    dead writers, an MLflow run left RUNNING) is removed by the next run's recovery; partial
    files of live processes and other hosts' journals stay."""
    data = project / "data"
    kept = data / "02_intermediate/x/events/2026-01-01T00.00.00.000Z"
    kept.mkdir(parents=True)
    (kept / "events.parquet").write_bytes(b"old")
    (data / "01_raw/x").mkdir(parents=True)
    (data / "06_models/x/model").mkdir(parents=True)
    before = _snapshot(data)
    dead = _dead_pid()
    version = data / "02_intermediate/x/events/2026-02-02T00.00.00.000Z"
    other = data / "03_primary/x/full/2026-02-02T00.00.00.000Z"
    for folder in (version, other):
        folder.mkdir(parents=True)
        (folder / "part.parquet").write_bytes(b"new")
    litter = [data / "01_raw/x" / f".events.csv.abc.partial-{socket.gethostname()}-{dead}",
              data / "06_models/x/model" / f".gru4rec.partial-{dead}"]  # fmt: skip
    litter[0].write_bytes(b"half a decompression")
    litter[1].mkdir()
    (litter[1] / "weights.safetensors").write_bytes(b"half")
    alive = data / "01_raw/x" / f".other.csv.abc.partial-{socket.gethostname()}-{os.getpid()}"
    alive.write_bytes(b"someone is writing this")

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    experiment = mlflow.set_experiment("killed-run")
    with mlflow.start_run(experiment_id=experiment.experiment_id) as active:
        run_id = active.info.run_id
    mlflow.MlflowClient().update_run(run_id, status="RUNNING")  # as a killed run leaves it

    JOURNAL_DIR.mkdir(parents=True)
    record = {"pid": dead, "host": socket.gethostname(), "save_version": "2026-02-02T00.00.00.000Z",
              "started": 0, "pipelines": ["preprocess_x"],
              "version_dirs": [[str(version.absolute()), str((data / "02_intermediate/x/events").absolute())],
                               [str(other.absolute()), str(data.absolute())]],
              "mlflow_run_id": run_id, "mlflow_tracking_uri": mlflow.get_tracking_uri()}  # fmt: skip
    (JOURNAL_DIR / "a.json").write_text(json.dumps(record))
    foreign = dict(record, host="another-host")
    (JOURNAL_DIR / "b.json").write_text(json.dumps(foreign))

    recovered = recover_killed_runs()
    assert [r["pipelines"] for r in recovered] == [["preprocess_x"]]
    after = _snapshot(data)
    assert alive.exists() and (JOURNAL_DIR / "b.json").exists()
    alive.unlink()
    (JOURNAL_DIR / "b.json").unlink()
    JOURNAL_DIR.rmdir()
    assert _snapshot(data) == before, set(after) ^ set(before)
    assert mlflow.MlflowClient().get_run(run_id).info.status == "KILLED"


def test_a_kedro_run_killed_while_decompressing_leaves_nothing_after_the_next_run(project: Path):
    """SIGKILL a ``kedro run`` while it inflates a ``.gz`` raw file: the temporary file and the
    run's journal stay behind; the next run removes both and succeeds."""
    raw = project / "data/01_raw/diginetica"
    name = _big_gzip_raw(raw, 150)  # ~150 MB inflated: the kill lands during decompression
    small = (raw / name).read_bytes()
    (raw / name).unlink()
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    kedro = Path(sys.executable).with_name("kedro")
    before = _snapshot(project / "data")
    proc = subprocess.Popen([str(kedro), "run", "--pipelines=preprocess_diginetica"], cwd=project,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    import time

    deadline = time.time() + 120
    while time.time() < deadline and not list(raw.glob(".*.partial-*")):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    leftovers = set(_snapshot(project / "data")) - set(before)
    assert any(".partial-" in p for p in leftovers), "the kill missed the decompression"
    (raw / f"{name}.gz").unlink()
    (raw / name).write_bytes(small)
    run(project, "preprocess_diginetica")
    after = _snapshot(project / "data")
    assert not [p for p in after if ".partial-" in p or p.startswith(".runs")]
    assert catalog(project).load("diginetica.test").height > 0


def test_ctrl_c_after_the_first_save_leaves_data_as_it_was(project: Path):
    """SIGINT (Ctrl-C) once the run has saved its first artifact: at exit the run's version
    folders are removed and its journal too; ``data/`` is as before."""
    import signal
    import time

    raw = project / "data/01_raw/diginetica"
    name = _big_gzip_raw(raw, 40)  # long enough to interrupt between the first saves and the end
    (raw / name).unlink()
    before = _snapshot(project / "data")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    kedro = Path(sys.executable).with_name("kedro")
    proc = subprocess.Popen([str(kedro), "run", "--pipelines=preprocess_diginetica"], cwd=project,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    first = project / "data/02_intermediate/diginetica"
    deadline = time.time() + 180
    while time.time() < deadline and not list(first.rglob("*.parquet")):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) != 0
    assert _snapshot(project / "data") == before


#: runs ``kedro`` with ``torch.save`` wrapped: the first write into a model's staging folder
#: (``.<name>.partial-<host>-<pid>/``) is completed, then the process SIGKILLs itself, so the
#: kill lands inside the model save of a real run (deterministically, not by timing)
_DIE_DURING_MODEL_SAVE = """
import os, signal, sys
import torch
from kedro.framework.cli import main

_save = torch.save

def save(obj, f, *args, **kwargs):
    _save(obj, f, *args, **kwargs)
    if "/.gru4rec.partial-" in str(f):
        os.kill(os.getpid(), signal.SIGKILL)

torch.save = save
sys.argv[0] = "kedro"
sys.exit(main())
"""


@pytest.mark.slow
def test_a_kedro_run_killed_during_a_model_save_leaves_nothing_after_the_next_run(project: Path):
    """SIGKILL a ``kedro run --pipelines=train`` in the middle of writing the model folder: the
    staging folder, the run's version folders and its journal stay behind, its MLflow run is
    RUNNING; the next run's recovery leaves ``data/`` exactly as before the killed run and
    marks the MLflow run KILLED; that run then succeeds."""
    import yaml

    settings = {"synthetic": {"config": {"n_events": 6000, "n_items": 200, "n_users": 600}},
                "gru4rec": {"synthetic": {"layers": [32], "n_epochs": 1, "n_sample": 64,
                                          "batch_size": 32, "num_threads": 1}}}  # fmt: skip
    (project / "conf/local/parameters_kill.yml").write_text(yaml.safe_dump(settings))
    run(project, "synthetic")
    run(project, "preprocess_synthetic")
    before = _snapshot(project / "data")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    killed = subprocess.run(
        [sys.executable, "-c", _DIE_DURING_MODEL_SAVE, "run", "--pipelines=train",
         "--namespaces=synthetic.gru4rec"],
        cwd=project, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    left = set(_snapshot(project / "data")) - set(before)
    assert any("/.gru4rec.partial-" in p for p in left), sorted(left)
    assert any(p.startswith(".runs/") for p in left), sorted(left)
    (journal,) = (project / JOURNAL_DIR).glob("*.json")
    record = json.loads(journal.read_text())
    run_id = record["mlflow_run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    assert mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING"

    recovered = recover_killed_runs()  # what the next run does first
    assert [r["pid"] for r in recovered] == [record["pid"]]
    assert _snapshot(project / "data") == before, set(_snapshot(project / "data")) ^ set(before)
    assert mlflow.MlflowClient().get_run(run_id).info.status == "KILLED"

    run(project, "train", namespaces=["synthetic.gru4rec"])
    after = _snapshot(project / "data")
    assert not [p for p in after if ".partial-" in p or p.startswith(".runs")]
    assert len(list((project / "data/06_models/synthetic/gru4rec").iterdir())) == 1
