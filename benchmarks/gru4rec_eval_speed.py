"""GRU4Rec evaluation throughput on the CPU: full-ranking ``evaluate`` targets/s.

A GRU4Rec with ``layers=512`` (the training benchmark's configuration, weights from the reference
initialisation: evaluation cost does not depend on the weights) is evaluated with
``recsys_pipeline.evaluation.evaluate`` (every target ranked against all items, tie mode
``standard`` unless ``--mode``), on synthetic test sessions (``generate_events`` with another seed
than the training events) for a ~3k and a ~40k item catalog.

Every measurement runs in a fresh subprocess (``--run-child``) so that its peak RSS and thread
setting are its own. Reported per run: targets/s as ``evaluate`` reports it (preparation
included), targets/s of the ranking loop alone (``evaluate``'s wall time minus its preparation
of the test streams), effective GFLOP/s of the loop (per target ``2 * 3H(E + H)`` per GRU layer
+ ``2 H n_items`` for the scores), peak RSS and the 1-minute load average before and after.

``--baseline`` also measures the package at git revision ``--baseline-ref`` (extracted read-only
with ``git archive``), interleaved with the current one.

Examples::

    .venv/bin/python benchmarks/gru4rec_eval_speed.py
    .venv/bin/python benchmarks/gru4rec_eval_speed.py --items 3000,40000 --threads 1,2 --repeat 3
    .venv/bin/python benchmarks/gru4rec_eval_speed.py --baseline --json benchmarks/out/e.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "benchmarks" / "data"
BASELINE_REF = "a11f510"


def make_data(n_events: int, n_items: int, seed: int, tag: str) -> Path:
    """Synthetic events as parquet (``SessionId, ItemId, Time``), cached under benchmarks/data."""
    path = DATA_DIR / f"gru4rec_{tag}_{n_events}_{n_items}_{seed}.parquet"
    if path.exists():
        return path
    from recsys_pipeline.synthetic import SyntheticConfig, generate_events

    events, _ = generate_events(
        SyntheticConfig(
            n_events=n_events, n_items=n_items, n_users=max(1, n_events // 10), seed=seed
        )
    )
    frame = events.select(
        events["session"].alias("SessionId"),
        events["item"].alias("ItemId"),
        events["ts_ms"].alias("Time"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def run_child(args: argparse.Namespace) -> None:
    import polars as pl
    import torch

    torch.set_num_threads(args.threads)
    from recsys_pipeline.evaluation import evaluate, prepare_streams
    from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams

    train = pl.read_parquet(args.train)
    test = pl.read_parquet(args.test)
    params = GRU4RecParams.from_string(
        f"loss=cross-entropy,layers=512,batch_size=128,n_epochs=0,device=cpu,seed={args.seed}"
    )
    model = GRU4Rec(params).fit(train, progress=False)  # n_epochs=0: initialised weights
    t0 = time.perf_counter()
    prepare_streams(model.item_ids, test)
    prepare_s = time.perf_counter() - t0
    result = evaluate(
        model, test, cutoffs=(1, 5, 10, 20), mode=args.mode, batch_size=args.batch_size,
        progress=False,
    )  # fmt: skip
    n_targets = int(result["n_targets"])
    loop_s = max(result["seconds"] - prepare_s, 1e-9)
    size = params.layers[-1]
    flop_per_target = 2 * 3 * size * (size + size) + 2 * size * model.n_items
    out = {
        "impl": args.impl,
        "threads": torch.get_num_threads(),
        "n_items": model.n_items,
        "n_targets": n_targets,
        "seconds": result["seconds"],
        "prepare_s": prepare_s,
        "targets_s": result["targets_per_s"],
        "loop_targets_s": n_targets / loop_s,
        "loop_gflops": n_targets * flop_per_target / loop_s / 1e9,
        "recall@20": result["recall@20"],
        "mrr@20": result["mrr@20"],
    }
    print("RESULT " + json.dumps(out), flush=True)


def extract_baseline(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def measure(args: argparse.Namespace, train: Path, test: Path, threads: int, impl: str,
            src: Path | None) -> dict:  # fmt: skip
    cmd = [
        sys.executable, __file__, "--run-child", "--train", str(train), "--test", str(test),
        "--threads", str(threads), "--seed", str(args.seed), "--mode", args.mode,
        "--batch-size", str(args.batch_size), "--impl", impl,
    ]  # fmt: skip
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"child failed:\n{text}")
    line = next(x for x in text.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    result["peak_rss_gib"] = usage.ru_maxrss * 1024 / 2**30
    return result


def describe(r: dict) -> str:
    return (
        f"{r['n_items']:>6} items {r['impl']:>8} t={r['threads']} | {r['n_targets']} targets | "
        f"{r['targets_s']:8.0f} targets/s (loop {r['loop_targets_s']:8.0f}, "
        f"{r['loop_gflops']:6.1f} GFLOP/s) | {r['seconds']:.2f} s (prep {r['prepare_s']:.2f}) | "
        f"peak RSS {r['peak_rss_gib']:.3f} GiB | recall@20 {r['recall@20']:.4f} | "
        f"load {r['load_before']:.2f}->{r['load_after']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", default="3000,40000", help="catalog sizes, comma-separated")
    parser.add_argument("--train-events", type=int, default=0,
                        help="training events (default 30 per item, >= 100k)")  # fmt: skip
    parser.add_argument("--test-events", type=int, default=50_000)
    parser.add_argument("--threads", default="2", help="comma-separated, e.g. 1,2")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--mode", default="standard")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--run-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--test", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="current", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_child:
        args.threads = int(args.threads)
        run_child(args)
        return

    catalogs = [int(x) for x in args.items.split(",")]
    thread_counts = [int(x) for x in args.threads.split(",")]
    data = {}
    for n_items in catalogs:
        n_train = args.train_events or max(100_000, 30 * n_items)
        data[n_items] = (
            make_data(n_train, n_items, args.seed, "synth"),
            make_data(args.test_events, n_items, args.seed + 1000, "test"),
        )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        impls: list[tuple[str, Path | None]] = [("current", ROOT / "src")]
        if args.baseline:
            impls.insert(0, ("baseline", extract_baseline(args.baseline_ref, Path(tmp))))
        for repeat in range(args.repeat):
            for n_items, (train, test) in data.items():
                for threads in thread_counts:
                    for impl, src in impls:
                        r = measure(args, train, test, threads, impl, src)
                        r["repeat"] = repeat
                        results.append(r)
                        print(describe(r), flush=True)
    print("summary (median over repeats):")
    keys = sorted({(r["n_items"], r["impl"], r["threads"]) for r in results})
    for key in keys:
        runs = [r for r in results if (r["n_items"], r["impl"], r["threads"]) == key]
        med = statistics.median(r["targets_s"] for r in runs)
        loop = statistics.median(r["loop_targets_s"] for r in runs)
        print(
            f"  {key[0]:>6} items {key[1]:>8} t={key[2]}: {med:8.0f} targets/s "
            f"(loop {loop:8.0f}), {len(runs)} run(s)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": results, "argv": sys.argv[1:]}, indent=2))


if __name__ == "__main__":
    main()
