"""Two CPU processes (gloo) train NeuMF with DistributedDataParallel via torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

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


def test_one_machine_job_listens_on_loopback_only(tmp_path) -> None:
    """``--nproc-per-node 2`` (the README's command): two gloo ranks train, and every TCP
    listener of the job (the parent's store, the ranks' gloo sockets) is on 127.0.0.1."""
    import psutil  # the dev extra

    files = _tiny_data(tmp_path)
    out, dump = tmp_path / "model", tmp_path / "ranks"
    params = "factors=4,layers=8/4,batch_size=64,n_epochs=4,learning_rate=0.01,device=cpu"
    cmd = [
        sys.executable, "-m", "recsys_pipeline.commands.neumf_ddp", "--nproc-per-node", "2",
        "--train", files["train"], "--out", str(out), "--params", params,
        "--rank-dump", str(dump),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GLOO_SOCKET_IFNAME", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    listening: set[tuple[str, int]] = set()
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            family = [parent, *parent.children(recursive=True)]
            for p in family:
                for c in p.net_connections(kind="tcp"):
                    if c.status == psutil.CONN_LISTEN:
                        listening.add((c.laddr.ip, c.laddr.port))
        except psutil.Error:
            pass
        time.sleep(0.02)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.returncode == 0, output[-4000:]
    assert len(listening) >= 2, listening  # the store and at least one gloo socket were seen
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    a = torch.load(dump / "rank0.pt", weights_only=True)
    b = torch.load(dump / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "weights.pt").exists()
