"""Lineage: `kedro viz build` works offline and shows every registered pipeline, every dataset in
a layer (the layer toggle needs a layer on each and no cycle among them), and the default
pipeline as three collapsible parts: generate, preprocess, train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_pipeline.pipeline_registry import register_pipelines
from tests.listeners import assert_loopback_only


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
    assert "circular dependency" not in done.stdout + done.stderr
    main = json.loads((project / "build" / "api" / "main").read_text())
    shown = {p["id"] for p in main["pipelines"]}
    registered = set(register_pipelines())
    assert registered <= shown, registered - shown
    names = {n["name"] for n in main["nodes"]}  # the default pipeline
    assert {"synthetic.raw", "synthetic.train_full", "synthetic.stats"} <= names
    assert "synthetic.validate" in names
    # the default view: three parts at the top, each expanding straight to its nodes
    root = main["modular_pipelines"]["__root__"]["children"]
    assert {c["id"] for c in root if c["type"] == "modularPipeline"} == {
        "generate", "preprocess", "train"
    }  # fmt: skip
    part_of = {n["name"]: n["modular_pipelines"] for n in main["nodes"] if n["type"] == "task"}
    assert part_of["synthetic.generate_raw"] == ["generate"]
    assert part_of["synthetic.validate"] == ["preprocess"]
    assert part_of["synthetic.gru4rec.evaluate"] == ["train"]
    # (kedro-viz orders layers by the graph; ties, e.g. primary and model_input, either way)
    assert main["layers"][0] == "raw" and main["layers"][-1] == "reporting"
    assert {"intermediate", "model_input", "models", "model_output"} <= set(main["layers"])
    for name in registered:
        graph = json.loads((project / "build" / "api" / "pipelines" / name).read_text())
        assert any(n["type"] == "task" for n in graph["nodes"]), name
        unlayered = [n["name"] for n in graph["nodes"] if n["type"] == "data" and not n["layer"]]
        assert unlayered == [], (name, unlayered)
        assert graph["layers"], name  # empty when the layers form a cycle
    rees46 = json.loads((project / "build" / "api" / "pipelines" / "preprocess_rees46").read_text())
    assert {"rees46.raw", "rees46.train_full", "rees46.test_tsv"} <= {
        n["name"] for n in rees46["nodes"]
    }


def _free_port() -> int:
    """A free loopback port below 49152 (kedro-viz refuses the ephemeral range)."""
    import random
    import socket

    for port in random.Random(os.getpid()).sample(range(20000, 49000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


@pytest.mark.slow
def test_viz_serves_the_graph_on_loopback(project: Path):
    import signal
    import time
    import urllib.request

    kedro = Path(sys.executable).with_name("kedro")
    port = _free_port()
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    cmd = [str(kedro), "viz", "run", "--host", "127.0.0.1", "--port", str(port), "--no-browser"]
    # uvicorn runs in a child process: start a new process group and stop the whole group
    server = subprocess.Popen(
        cmd,
        cwd=project,
        env=env,
        start_new_session=True,
        stdout=(project / "viz.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/main", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(1)
        assert body is not None, "kedro viz did not answer within 90 s"
        assert "preprocess_rees46" in {p["id"] for p in body["pipelines"]}
        assert_loopback_only(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
