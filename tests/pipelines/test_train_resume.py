"""A real ``kedro run --pipelines=train`` process killed during epoch 3 resumes at epoch 3 when
run again, and ends with the same weights as an uninterrupted run of the same configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.pipelines.conftest import run

# big enough for an epoch to last about a second on one thread, small enough for the suite
SETTINGS = {
    "synthetic": {"config": {"n_events": 60000, "n_items": 600, "n_users": 6000}},
    "gru4rec": {
        "synthetic": {
            "layers": [96],
            "n_epochs": 4,
            "n_sample": 512,
            "batch_size": 32,
            "dropout_p_hidden": 0.2,
            "num_threads": 1,
        }
    },
}
MODEL = Path("data/06_models/synthetic/gru4rec")
CHECKPOINT = Path("data/06_models/checkpoints/synthetic/gru4rec/checkpoint.pt")


def _weights(project: Path) -> list[dict[str, torch.Tensor]]:
    """The weights of every saved version, oldest first."""
    files = sorted((project / MODEL).glob("*/gru4rec/weights.pt"))
    return [torch.load(f, weights_only=True) for f in files]


def _checkpoint_epoch(project: Path) -> int:
    try:
        return int(torch.load(project / CHECKPOINT, weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return 0


@pytest.mark.slow
def test_a_killed_training_run_resumes_at_its_last_finished_epoch(project: Path):
    (project / "conf/local/parameters_resume.yml").write_text(yaml.safe_dump(SETTINGS))
    run(project, "synthetic")
    run(project, "preprocess_synthetic")
    run(project, "train", namespaces=["synthetic.gru4rec"])  # uninterrupted reference
    [reference] = _weights(project)
    assert not (project / CHECKPOINT).exists()

    command = [str(Path(sys.executable).with_name("kedro")), "run", "--pipelines=train"]
    job = subprocess.Popen(
        [*command, "--namespaces=synthetic.gru4rec"],
        cwd=project,
        env=os.environ | {"KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        for line in job.stdout:  # until epoch 2 is reported, then until its checkpoint is there
            lines.append(line)
            if "epoch 2 --> loss" in line:
                break
        deadline = time.monotonic() + 30
        while _checkpoint_epoch(project) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _checkpoint_epoch(project) == 2, "".join(lines[-30:])
        assert job.poll() is None, "".join(lines[-30:])
        job.send_signal(signal.SIGKILL)  # during epoch 3
    finally:
        job.kill()
        job.wait()
    assert job.returncode == -signal.SIGKILL
    assert len(_weights(project)) == 1  # the killed run saved no model
    assert _checkpoint_epoch(project) == 2

    again = subprocess.run(
        [*command, "--namespaces=synthetic.gru4rec"],
        cwd=project,
        env=os.environ | {"KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=False,
    )
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "continuing at epoch 3 of 4" in output
    assert "epoch 1 --> loss" not in output and "epoch 3 --> loss" in output
    reference_again, resumed = _weights(project)
    assert reference_again.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert not (project / CHECKPOINT).exists()
