"""Latency and throughput of a GRU4Rec recommender behind ``mlflow models serve``.

A GRU4Rec (``--layers``, default 128, on ``--items`` items, default 3,000) is trained for one
epoch on generated successor sessions (item ``i`` mostly followed by ``i + 1``; the weights do not
change the cost of a request), logged with :func:`recsys_pipeline.serving.pyfunc.log_pyfunc_model` to a
temporary sqlite tracking store, and served with::

    mlflow models serve -m runs:/<run_id>/recommender --env-manager local \\
        --host 127.0.0.1 --port <free port> --workers <--workers>

Then ``POST /invocations`` (``dataframe_records`` + ``params``) is timed, one persistent HTTP
connection per client, for single-session and batched requests (``--batch`` sessions), with one
client (sequential) and with ``--clients`` concurrent clients (threads). Sessions are random runs
of 1-10 known item ids. Reported per scenario: latency p50/p99 (ms), requests/s and sessions/s,
plus the in-process :func:`~recsys_pipeline.serving.recommend.recommend` time of the same requests (the
model's share of the latency).

Examples::

    .venv/bin/python benchmarks/serving_latency.py
    .venv/bin/python benchmarks/serving_latency.py --layers 512 --requests 100 --clients 4
    .venv/bin/python benchmarks/serving_latency.py --json benchmarks/out/serving_latency.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
import torch

from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
from recsys_pipeline.serving.pyfunc import log_pyfunc_model
from recsys_pipeline.serving.recommend import recommend

ROOT = Path(__file__).resolve().parents[1]


def make_sessions(n_items: int, n_sessions: int, seed: int) -> pl.DataFrame:
    """Training events: sessions of 2-10 items where item ``i`` is followed by ``i + 1`` (90 %)
    or a random item; raw ids ``100000 + i``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 11, n_sessions)
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    idx = np.empty(total, dtype=np.int64)
    first = rng.integers(0, n_items, n_sessions)
    jump = rng.random(total) < 0.1
    random_items = rng.integers(0, n_items, total)
    pos = 0
    for s, length in enumerate(lengths):  # short loop over sessions, fine for a benchmark
        cur = first[s]
        for t in range(length):
            if t > 0:
                cur = random_items[pos] if jump[pos] else (cur + 1) % n_items
            idx[pos] = cur
            pos += 1
    assert pos == total and starts[-1] + lengths[-1] == total
    return pl.DataFrame(
        {
            "SessionId": np.repeat(np.arange(n_sessions), lengths),
            "ItemId": 100_000 + idx,
            "Time": np.arange(total),
        }
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the server did not answer /ping")


def request_bodies(
    item_ids: np.ndarray, n: int, batch: int, k: int, rng: np.random.Generator
) -> list[tuple[bytes, list[list[int]]]]:
    """``n`` request bodies of ``batch`` random sessions each, with their sessions."""
    out = []
    for _ in range(n):
        sessions = [
            rng.choice(item_ids, size=int(rng.integers(1, 11))).tolist() for _ in range(batch)
        ]
        payload = {"dataframe_records": [{"session": s} for s in sessions], "params": {"k": k}}
        out.append((json.dumps(payload).encode(), sessions))
    return out


def run_scenario(
    port: int, bodies: list[tuple[bytes, list[list[int]]]], clients: int, warmup: int
) -> dict[str, float]:
    """Send ``bodies`` with ``clients`` threads (each its own keep-alive connection)."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    next_index = iter(range(len(bodies)))
    counter_lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Content-Type": "application/json"}
        for body, _ in bodies[:warmup]:
            conn.request("POST", "/invocations", body=body, headers=headers)
            conn.getresponse().read()
        barrier.wait()
        while True:
            with counter_lock:
                i = next(next_index, None)
            if i is None:
                break
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", body=bodies[i][0], headers=headers)
            response = conn.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - t0
            if response.status != 200:
                errors.append(f"{response.status}: {data[:200]!r}")
            with lock:
                latencies.append(elapsed)
        conn.close()

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    lat = np.array(latencies) * 1000
    batch = len(bodies[0][1])
    return {
        "requests": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "requests_per_s": len(lat) / wall,
        "sessions_per_s": len(lat) * batch / wall,
    }


def in_process_ms(model: Any, bodies: list[tuple[bytes, list[list[int]]]], k: int) -> float:
    """Median in-process ``recommend`` time per request (ms), the model's share."""
    times = []
    for _, sessions in bodies:
        t0 = time.perf_counter()
        recommend(model, sessions, k=k)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--layers", type=int, default=128)
    parser.add_argument("--train-sessions", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per scenario")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per client")
    parser.add_argument("--batch", type=int, default=64, help="sessions per batched request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    params = GRU4RecParams(
        layers=[args.layers], batch_size=64, n_sample=512, n_epochs=1, device="cpu"
    )
    train = make_sessions(args.items, args.train_sessions, seed=1)
    model = GRU4Rec(params).fit(train, progress=False)
    print(
        f"trained GRU4Rec layers={args.layers} on {model.n_items} items, "
        f"{train.height} events, 1 epoch in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        root = Path(tmp)
        tracking = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(tracking)
        experiment = mlflow.create_experiment("bench", artifact_location=(root / "a").as_uri())
        mlflow.set_experiment(experiment_id=experiment)
        t0 = time.perf_counter()
        info = log_pyfunc_model(model, torch_threads=args.threads)
        print(f"logged in {time.perf_counter() - t0:.1f} s", flush=True)

        port = free_port()
        bin_dir = Path(sys.executable).parent
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_TRACKING_URI": tracking,
            "OMP_NUM_THREADS": str(args.threads),
        }
        command = [
            str(bin_dir / "mlflow"), "models", "serve",
            "-m", f"runs:/{info.run_id}/recommender", "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
        ]  # fmt: skip
        log_path = root / "server.log"
        with log_path.open("wb") as log:
            t0 = time.perf_counter()
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            results: dict[str, Any] = {
                "config": {**vars(args), "json": str(args.json) if args.json else None},
                "load_average_before": os.getloadavg(),
                "cpu_count": os.cpu_count(),
                "scenarios": {},
            }
            try:
                wait_ready(port, process)
                print(f"server ready in {time.perf_counter() - t0:.1f} s", flush=True)
                rng = np.random.default_rng(7)
                ids = np.asarray(model.item_ids)
                header = (
                    f"{'scenario':<28}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}"
                    f"{'sess/s':>10}{'model ms':>10}"
                )
                print(header)
                for batch in (1, args.batch):
                    n = args.requests if batch == 1 else max(20, args.requests // 4)
                    bodies = request_bodies(ids, n, batch, args.k, rng)
                    model_ms = in_process_ms(model, bodies[: min(n, 50)], args.k)
                    for clients in (1, args.clients):
                        name = f"batch={batch} clients={clients}"
                        r = run_scenario(port, bodies, clients, args.warmup)
                        r["in_process_recommend_ms"] = model_ms
                        results["scenarios"][name] = r
                        print(
                            f"{name:<28}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                            f"{r['requests_per_s']:>9.1f}{r['sessions_per_s']:>10.1f}"
                            f"{model_ms:>10.2f}",
                            flush=True,
                        )
            except Exception:
                print(log_path.read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                    try:
                        process.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
        results["load_average_after"] = os.getloadavg()
        print(f"load average before/after: {results['load_average_before']} / "
              f"{results['load_average_after']} ({os.cpu_count()} CPUs)")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
