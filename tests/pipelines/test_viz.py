"""Lineage: `kedro viz build` works offline and shows every registered pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_pipeline.pipeline_registry import register_pipelines


@pytest.mark.slow
def test_viz_build_contains_every_pipeline(project: Path):
    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [str(kedro), "viz", "build"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    main = json.loads((project / "build" / "api" / "main").read_text())
    shown = {p["id"] for p in main["pipelines"]}
    registered = set(register_pipelines())
    assert registered <= shown, registered - shown
    names = {n["name"] for n in main["nodes"]}  # the default pipeline
    assert {"synthetic.raw", "synthetic.train_full", "synthetic.stats", "validate"} <= names
    for name in registered - {"__default__"}:
        graph = json.loads((project / "build" / "api" / "pipelines" / name).read_text())
        assert any(n["type"] == "task" for n in graph["nodes"]), name
    rees46 = json.loads((project / "build" / "api" / "pipelines" / "preprocess_rees46").read_text())
    assert {"rees46.raw", "rees46.train_full", "rees46.test_tsv"} <= {
        n["name"] for n in rees46["nodes"]
    }
