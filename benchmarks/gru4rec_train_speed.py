"""GRU4Rec training throughput on the CPU, against the official PyTorch port's figures.

Configuration of the issue: ``layers=512, batch_size=128, n_sample=2048`` (all other parameters at
the reference defaults, shared embedding), loss ``bpr-max`` and ``cross-entropy``, on a synthetic
event log of ~100k events and ~3k items (``recsys_pipeline.synthetic.generate_events``).

Every measurement runs in a fresh subprocess (``--run-child``), so that its peak RSS is its own
(``ru_maxrss`` of that child from ``os.wait4``: interpreter, imports, data, model, everything) and
the thread setting does not leak. Reported per run:

* ``mb/s`` and ``targets/s`` of every epoch (the trainer's own timing, from the first to the last
  step of the epoch); the run's figure is the median over its epochs, ``best`` the fastest epoch;
* ``setup s``: wall time of ``GRU4Rec.fit`` minus the time of its epochs (grouping the events into
  sessions, network initialisation, the negative-sample store, planning the epoch);
* ``peak RSS`` of the child;
* ``GFLOP/s`` = mini-batches/s x 3 x forward, forward = ``2 B 3 H (E + H)`` per GRU layer +
  ``2 B H (B + n_sample)`` for the output layer at the nominal ``B = batch_size`` (2.06 GFLOP per
  mini-batch for this configuration), the count the official figures were given in. ``exact``
  uses every step's true number of rows instead (the last steps of an epoch are smaller);
* the 1-minute load average before and after the run (the machine is shared);
* ``sgemm now``: what plain sgemm of the same shapes (the 8 GEMMs of one step, full
  ``B + n_sample`` output columns) reaches at that moment with the same thread count, measured in
  the parent right before the run (``--sgemm-seconds``), and the ratio of the run's GFLOP/s to it.
  The machine's speed drifts by +-25 % with its neighbours' load; the ratio drifts much less.

``--baseline`` additionally measures the unoptimised implementation: the package as of git
revision ``--baseline-ref`` is extracted (``git archive``, read-only) into a temporary folder and
the child imports it from there, so both variants run in the same session, interleaved.

Examples::

    .venv/bin/python benchmarks/gru4rec_train_speed.py                      # both losses
    .venv/bin/python benchmarks/gru4rec_train_speed.py --loss bpr-max --threads 1,2 --repeat 3
    .venv/bin/python benchmarks/gru4rec_train_speed.py --baseline --json benchmarks/out/t.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "benchmarks" / "data"
BASELINE_REF = "a11f510"  # the commit before the training speed-ups

#: the official port's figures on the 2-core development machine (GFLOP/s by the count above)
OFFICIAL = {
    "bpr-max": {"gflops": (56.0, 65.0), "mb_s": (27.0, 31.0)},
    "cross-entropy": {"gflops": (90.0, 90.0), "mb_s": (43.0, 43.0)},
}
TARGET_GFLOPS = {"bpr-max": 120.0, "cross-entropy": 135.0}
TARGET_SETUP_S = 0.5
OFFICIAL_RSS_GIB = (0.8, 0.9)
TARGET_RSS_GIB = OFFICIAL_RSS_GIB[0] / 2  # half of the official's (lower end: strictest)


def forward_flops(batch: int, layers: list[int], n_input: int, n_sample: int) -> float:
    """FLOPs of one forward pass: GRU layers + output layer (the issue's count)."""
    flops = 0.0
    width = n_input
    for size in layers:
        flops += 2.0 * batch * 3 * size * (width + size)
        width = size
    return flops + 2.0 * batch * layers[-1] * (batch + n_sample)


# ------------------------------------------------------------------------------------- data


def make_data(n_events: int, n_items: int, seed: int) -> Path:
    """The synthetic training events as parquet (``SessionId, ItemId, Time``), cached."""
    path = DATA_DIR / f"gru4rec_synth_{n_events}_{n_items}_{seed}.parquet"
    if path.exists():
        return path
    from recsys_pipeline.synthetic import SyntheticConfig, generate_events

    n_users = max(1, n_events // 10)
    events, _ = generate_events(
        SyntheticConfig(n_events=n_events, n_items=n_items, n_users=n_users, seed=seed)
    )
    frame = events.select(
        events["session"].alias("SessionId"),
        events["item"].alias("ItemId"),
        events["ts_ms"].alias("Time"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


# ------------------------------------------------------------------------------------ child


def sgemm_reference(batch: int, size: int, n_input: int, n_sample: int, seconds: float) -> float:
    """GFLOP/s of the 8 plain GEMMs of one training step of a one-layer network (forward: input
    and hidden projections, scores over ``B + n_sample`` columns; backward: the five gradient
    GEMMs), with the shapes of the FLOP count, at the current thread setting: best of several
    rounds of about ``seconds`` in all. What the machine's sgemm gives right now."""
    import torch

    n_out = batch + n_sample
    x, h = torch.randn(batch, n_input), torch.randn(batch, size)
    wx, wh = torch.randn(n_input, 3 * size) * 0.05, torch.randn(size, 3 * size) * 0.05
    bias, rows = torch.zeros(3 * size), torch.randn(n_out, size) * 0.05
    g_scores, g_gates = torch.randn(batch, n_out), torch.randn(batch, 3 * size)
    out = {k: torch.empty(*shape) for k, shape in {
        "gx": (batch, 3 * size), "gh": (batch, 3 * size), "s": (batch, n_out),
        "go": (n_out, size), "gh2": (batch, size), "gwx": (n_input, 3 * size),
        "gwh": (size, 3 * size), "gxin": (batch, n_input),
    }.items()}  # fmt: skip

    def step() -> None:
        torch.addmm(bias, x, wx, out=out["gx"])
        torch.mm(h, wh, out=out["gh"])
        torch.mm(h, rows.T, out=out["s"])
        torch.mm(g_scores.T, h, out=out["go"])
        torch.mm(g_scores, rows, out=out["gh2"])
        torch.mm(x.T, g_gates, out=out["gwx"])
        torch.mm(h.T, g_gates, out=out["gwh"])
        torch.mm(g_gates, wx.T, out=out["gxin"])

    flop = 3 * forward_flops(batch, [size], n_input, n_sample)
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    step()
    per_step = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(seconds / 5 / per_step))
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        best = max(best, n * flop / (time.perf_counter() - t0) / 1e9)
    return best


def run_child(args: argparse.Namespace) -> None:
    """Train once and print one JSON line with the figures (runs in a fresh process)."""
    t_import = time.perf_counter()
    import numpy as np
    import polars as pl
    import torch

    torch.set_num_threads(args.threads)
    import recsys_pipeline
    from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
    from recsys_pipeline.training.session_iterator import plan_epoch, sessions_from_frame

    import_s = time.perf_counter() - t_import
    train = pl.read_parquet(args.data)
    text = f"loss={args.loss},layers=512,batch_size=128,n_sample=2048,n_epochs={args.epochs}"
    text += f",device=cpu,seed={args.seed}" + (f",{args.params}" if args.params else "")
    params = GRU4RecParams.from_string(text)
    model = GRU4Rec(params)
    t0 = time.perf_counter()
    model.fit(train, progress=False)
    fit_s = time.perf_counter() - t0
    epochs = model.history
    setup_s = fit_s - sum(s.seconds for s in epochs)

    # the true size of every step, for the exact FLOP count (not timed)
    data = sessions_from_frame(train)
    order = data.session_order(params.time_sort)
    plan = plan_epoch(data.items, data.offsets, order, params.batch_size)
    sizes = np.diff(plan.step_offsets)
    n_input = params.layers[-1] if params.embedding_mode == "shared" else params.embedding
    exact = sum(
        3 * forward_flops(int(b), params.layers, n_input, params.n_sample) * int(c)
        for b, c in zip(*np.unique(sizes, return_counts=True), strict=True)
    )
    nominal = 3 * forward_flops(params.batch_size, params.layers, n_input, params.n_sample)
    out = {
        "loss": args.loss,
        "threads": torch.get_num_threads(),
        "impl": args.impl,
        "package": str(Path(recsys_pipeline.__file__).parent),
        "import_s": import_s,
        "fit_s": fit_s,
        "setup_s": setup_s,
        "n_batches": epochs[0].n_batches,
        "n_targets": epochs[0].n_targets,
        "n_items": model.n_items,
        "gflop_per_batch": nominal / 1e9,
        "gflop_per_epoch_exact": exact / 1e9,
        "epochs": [{"seconds": s.seconds, "loss": s.loss, "mb_s": s.batches_per_s} for s in epochs],
    }
    print("RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------- parent


def extract_baseline(ref: str, into: Path) -> Path:
    """The package ``src/`` as of git ``ref`` under ``into`` (read-only git commands only)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def measure(args: argparse.Namespace, loss: str, threads: int, impl: str, src: Path | None) -> dict:
    cmd = [
        sys.executable, __file__, "--run-child", "--loss", loss, "--threads", str(threads),
        "--epochs", str(args.epochs), "--data", str(args.data), "--seed", str(args.seed),
        "--impl", impl,
    ]  # fmt: skip
    if args.params:
        cmd += ["--params", args.params]
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    sgemm = 0.0
    if args.sgemm_seconds > 0:  # in this (parent) process, right before the run
        import torch

        torch.set_num_threads(threads)
        sgemm = sgemm_reference(128, 512, 512, 2048, args.sgemm_seconds)
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
    result["peak_rss_gib"] = usage.ru_maxrss * 1024 / 2**30  # Linux: KiB
    result["sgemm_gflops"] = sgemm
    mb_s = [e["mb_s"] for e in result["epochs"]]
    seconds = [e["seconds"] for e in result["epochs"]]
    result["mb_s"] = statistics.median(mb_s)
    result["mb_s_best"] = max(mb_s)
    result["targets_s"] = result["n_targets"] / statistics.median(seconds)
    result["gflops"] = result["mb_s"] * result["gflop_per_batch"]
    result["gflops_best"] = result["mb_s_best"] * result["gflop_per_batch"]
    result["gflops_exact"] = result["gflop_per_epoch_exact"] / statistics.median(seconds)
    return result


def verdicts(r: dict) -> dict[str, bool]:
    return {
        f"GFLOP/s >= {TARGET_GFLOPS[r['loss']]:.0f}": r["gflops"] >= TARGET_GFLOPS[r["loss"]],
        f"setup < {TARGET_SETUP_S} s": r["setup_s"] < TARGET_SETUP_S,
        f"peak RSS <= {TARGET_RSS_GIB:.2f} GiB": r["peak_rss_gib"] <= TARGET_RSS_GIB,
    }


def describe(r: dict) -> str:
    lo, hi = OFFICIAL[r["loss"]]["gflops"]
    ratio = f"{r['gflops'] / hi:.2f}x" + (f"-{r['gflops'] / lo:.2f}x" if lo != hi else "")
    flags = " ".join(f"[{'PASS' if ok else 'FAIL'} {name}]" for name, ok in verdicts(r).items())
    return (
        f"{r['loss']:>13} {r['impl']:>8} t={r['threads']} | "
        f"{r['mb_s']:6.2f} mb/s (best {r['mb_s_best']:6.2f}) | {r['targets_s']:7.0f} targets/s | "
        f"{r['gflops']:6.1f} GFLOP/s (best {r['gflops_best']:6.1f}, exact {r['gflops_exact']:6.1f})"
        f" = {ratio} official | setup {r['setup_s']:.3f} s | peak RSS {r['peak_rss_gib']:.3f} GiB"
        f" | sgemm now {r['sgemm_gflops']:5.1f} GFLOP/s"
        f" (x{r['gflops'] / max(r['sgemm_gflops'], 1e-9):.2f})"
        f" | load {r['load_before']:.2f}->{r['load_after']:.2f} | {flags}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", default="bpr-max,cross-entropy", help="comma-separated")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=3_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", default="2", help="comma-separated, e.g. 1,2")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--params", default="", help="extra GRU4Rec parameters, name=value,...")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--baseline", action="store_true", help="also run --baseline-ref")
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--fail-on-targets", action="store_true")
    parser.add_argument(
        "--sgemm-seconds", type=float, default=3.0, help="time for the sgemm reference (0: skip)"
    )
    parser.add_argument("--run-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="current", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_child:
        args.threads = int(args.threads)
        run_child(args)
        return

    t0 = time.perf_counter()
    args.data = make_data(args.events, args.items, args.seed)
    print(f"data: {args.data} ({time.perf_counter() - t0:.1f} s)", flush=True)
    losses = [x.strip() for x in args.loss.split(",") if x.strip()]
    thread_counts = [int(x) for x in args.threads.split(",")]
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        impls: list[tuple[str, Path | None]] = [("current", ROOT / "src")]
        if args.baseline:
            impls.insert(0, ("baseline", extract_baseline(args.baseline_ref, Path(tmp))))
        for repeat in range(args.repeat):
            for loss in losses:
                for threads in thread_counts:
                    for impl, src in impls:
                        r = measure(args, loss, threads, impl, src)
                        r["repeat"] = repeat
                        results.append(r)
                        print(describe(r), flush=True)
    print(
        f"\ndata: {results[0]['n_targets']} targets/epoch, {results[0]['n_batches']} mini-batches,"
        f" {results[0]['n_items']} items; {results[0]['gflop_per_batch']:.3f} GFLOP per "
        f"mini-batch; {os.cpu_count()} CPUs; own peak RSS (parent) "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.3f} GiB"
    )
    print("summary (best run per configuration, by median-epoch GFLOP/s):")
    best: dict[tuple, dict] = {}
    for r in results:
        key = (r["loss"], r["impl"], r["threads"])
        if key not in best or r["gflops"] > best[key]["gflops"]:
            best[key] = r
    for r in best.values():
        print("  " + describe(r))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": results, "argv": sys.argv[1:]}, indent=2))
    failed = [r for r in best.values() if r["impl"] == "current" and not all(verdicts(r).values())]
    if args.fail_on_targets and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
