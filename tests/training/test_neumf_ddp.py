"""Two CPU processes (gloo) train NeuMF with DistributedDataParallel via torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import polars as pl
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_data(tmp_path) -> dict[str, str]:
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(40, 3)), rng.normal(size=(30, 3))
    rows = []
    for user in range(40):
        p = np.exp(2 * u[user] @ v.T)
        for t, item in enumerate(rng.choice(30, 8, replace=False, p=p / p.sum())):
            rows.append((user, int(item), t))
    frame = pl.DataFrame(rows, schema=["UserId", "ItemId", "Time"], orient="row")
    path = tmp_path / "train.parquet"
    frame.write_parquet(path)
    return {"train": str(path)}


def test_two_process_gloo_training(tmp_path) -> None:
    files = _tiny_data(tmp_path)
    out, dump = tmp_path / "model", tmp_path / "ranks"
    params = "factors=4,layers=8/4,batch_size=64,n_epochs=4,learning_rate=0.01,device=cpu"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        f"--master_port={_free_port()}", "-m", "recsys_pipeline.commands.neumf_ddp",
        "--train", files["train"], "--out", str(out), "--params", params,
        "--rank-dump", str(dump),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a = torch.load(dump / "rank0.pt", weights_only=True)
    b = torch.load(dump / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 4
    assert history[-1]["loss"] < history[0]["loss"]
