"""GRU4Rec evaluation throughput on the CPU (full ranking), side by side with the official code.

A GRU4Rec with ``layers=512`` (the training benchmark's configuration, weights from the reference
initialisation: evaluation cost does not depend on the weights) is evaluated with
``recsys_pipeline.evaluation.evaluate`` (every target ranked against all items, tie mode
``standard`` unless ``--mode``), on synthetic test sessions (``generate_events`` with another seed
than the training events) for a ~3k and a ~40k item catalog. Train and test events are written
once as ``SessionId, ItemId, Time`` TSV files that every leg reads.

Every measurement runs in a fresh subprocess so that its peak RSS and thread setting are its own;
the legs are interleaved over ``--repeat`` rounds. Legs:

* **ours** (``current``, ``--run-child``): targets/s as ``evaluate`` reports it (preparation
  included), targets/s of the ranking loop alone (``evaluate``'s wall time minus its preparation
  of the test streams), effective GFLOP/s of the loop (per target ``2 * 3H(E + H)`` per GRU layer
  + ``2 H n_items`` for the scores);
* **official**: hidasib/GRU4Rec_PyTorch_Official's ``evaluation.batch_eval`` (same tie mode, same
  number of parallel sessions, ``--batch-size``), run by the shared driver
  ``drive_gru4rec_official.py`` after ``fit`` with ``n_epochs=0`` (initialised weights), with
  the same thread count. targets/s = the driver's ``eval_targets_per_s`` (its timer covers
  building the test iterator and the ranking loop, not reading the file). Options and
  environment variables as in ``gru4rec_train_speed.py`` (``--official-src`` /
  ``GRU4REC_OFFICIAL_SRC``, ``--official-python`` / ``GRU4REC_OFFICIAL_PYTHON``,
  ``--official-driver``); when they are missing the leg is skipped with one line saying why and
  no ratio to it is printed;
* **baseline** (``--baseline``): the package at git revision ``--baseline-ref`` (extracted
  read-only with ``git archive``).

Printed per run also: the number of targets (both legs should agree), Recall@20 (of untrained
weights, which the two implementations initialise from different random streams: not a check),
peak RSS (the official's includes its training set-up: data, sample store) and the 1-minute load
average before and after. The summary gives medians over the runs and the ratio ours / official of targets/s,
from the runs of this invocation only.

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
import sys
import tempfile
import time
from pathlib import Path

from gru4rec_train_speed import (
    ROOT,
    add_official_options,
    extract_baseline,
    launch_child,
    official_unavailable,
    run_official,
    synthetic_tsv,
)

BASELINE_REF = "a11f510"
EVAL_PARAMS = {"loss": "cross-entropy", "layers": "512", "batch_size": "128", "n_epochs": "0"}


def run_child(args: argparse.Namespace) -> None:
    import polars as pl
    import torch

    torch.set_num_threads(args.threads)
    from recsys_pipeline.evaluation import evaluate, prepare_streams
    from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams

    train = pl.read_csv(args.train, separator="\t")
    test = pl.read_csv(args.test, separator="\t")
    text = ",".join(f"{k}={v}" for k, v in EVAL_PARAMS.items())
    params = GRU4RecParams.from_string(f"{text},device=cpu,seed={args.seed}")
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


def measure(
    args: argparse.Namespace, train: Path, test: Path, threads: int, impl: str, src: Path | None,
    work: Path,
) -> dict:  # fmt: skip
    load_before = os.getloadavg()[0]
    if impl == "official":
        rec, rss = run_official(
            args, EVAL_PARAMS, train=train, test=test, threads=threads, cutoffs="1,5,10,20",
            eval_batch=args.batch_size, eval_mode=args.mode, work=work,
        )  # fmt: skip
        result = {
            "threads": rec["torch_threads"],
            "n_items": rec["train_items"],
            "n_targets": rec["eval_targets"],
            "seconds": rec["eval_s"],
            "targets_s": rec["eval_targets"] / rec["eval_s"],
            "recall@20": rec["recall"]["20"],
            "mrr@20": rec["mrr"]["20"],
            "eval_batch": rec["eval_batch"],
            "peak_rss_gib": rss,
        }
    else:
        assert src is not None
        cmd = [
            sys.executable, __file__, "--run-child", "--train", str(train), "--test", str(test),
            "--threads", str(threads), "--seed", str(args.seed), "--mode", args.mode,
            "--batch-size", str(args.batch_size),
        ]  # fmt: skip
        result = launch_child(cmd, src)
    result.update(impl=impl, load_before=load_before, load_after=os.getloadavg()[0])
    return result


def describe(r: dict) -> str:
    loop = (
        f" (loop {r['loop_targets_s']:8.0f}, {r['loop_gflops']:6.1f} GFLOP/s)"
        if "loop_targets_s" in r
        else ""
    )
    prep = f" (prep {r['prepare_s']:.2f})" if "prepare_s" in r else ""
    return (
        f"{r['n_items']:>6} items {r['impl']:>8} t={r['threads']} | {r['n_targets']} targets | "
        f"{r['targets_s']:8.0f} targets/s{loop} | {r['seconds']:.2f} s{prep} | "
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
    parser.add_argument("--no-official", action="store_true", help="skip the official leg")
    add_official_options(parser)
    parser.add_argument("--run-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--test", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_child:
        args.threads = int(args.threads)
        run_child(args)
        return

    skip_official = "--no-official" if args.no_official else official_unavailable(args)
    if skip_official is None and args.mode not in ("standard", "conservative", "median"):
        skip_official = f"it has no tie mode {args.mode!r}"
    if skip_official:
        print(f"official GRU4Rec: skipped ({skip_official}); no ratio to it is printed")
    catalogs = [int(x) for x in args.items.split(",")]
    thread_counts = [int(x) for x in args.threads.split(",")]
    data = {}
    for n_items in catalogs:
        n_train = args.train_events or max(100_000, 30 * n_items)
        data[n_items] = (
            synthetic_tsv(n_train, n_items, args.seed, "synth"),
            synthetic_tsv(args.test_events, n_items, args.seed + 1000, "test"),
        )
    results = []
    with tempfile.TemporaryDirectory(prefix="gru4rec_eval_speed_") as tmp:
        work = Path(tmp)
        impls: list[tuple[str, Path | None]] = [("current", ROOT / "src")]
        if args.baseline:
            base = work / "baseline"
            base.mkdir()
            impls.insert(0, ("baseline", extract_baseline(args.baseline_ref, base)))
        if not skip_official:
            impls.append(("official", None))
        for repeat in range(args.repeat):
            for n_items, (train, test) in data.items():
                for threads in thread_counts:
                    for impl, src in impls:
                        r = measure(args, train, test, threads, impl, src, work)
                        r["repeat"] = repeat
                        results.append(r)
                        print(describe(r), flush=True)
    print("summary (median over the runs of this invocation):")
    medians: dict[tuple, float] = {}
    for key in dict.fromkeys((r["n_items"], r["threads"], r["impl"]) for r in results):
        runs = [r for r in results if (r["n_items"], r["threads"], r["impl"]) == key]
        medians[key] = statistics.median(r["targets_s"] for r in runs)
        loop = ""
        if "loop_targets_s" in runs[0]:
            loop = f" (loop {statistics.median(r['loop_targets_s'] for r in runs):8.0f})"
        print(
            f"  {key[0]:>6} items {key[2]:>8} t={key[1]}: {medians[key]:8.0f} targets/s{loop}, "
            f"{len(runs)} run(s)"
        )
    ratios = []
    for (n_items, threads, impl), value in medians.items():
        official = medians.get((n_items, threads, "official"))
        if impl != "official" and official:
            ratios.append(
                f"  {n_items:>6} items t={threads}: {impl} / official targets/s = "
                f"{value / official:.2f}x ({value:.0f} / {official:.0f})"
            )
    if ratios:
        print("speed ratios (measured side by side in this invocation):")
        print("\n".join(ratios))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"runs": results, "ratios": ratios, "argv": sys.argv[1:]}, indent=2)
        )


if __name__ == "__main__":
    main()
