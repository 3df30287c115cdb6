"""HSTU (or SASRec, ``--model sasrec``) side by side with Meta's research trainer
(facebookresearch/generative-recommenders), same data, configuration, epochs and seeds, under
the reference's protocol: accuracy of both legs, training speed of both.

Both legs run as child processes with ``torch.set_num_threads(--threads)``:

* **reference**: ``../shared/reference/drive_gr.py`` (``--driver``) runs the research
  trainer unmodified from ``--gr-src`` (commit 2e81fab) with the gin configuration of the
  model (``--gin``, default ``configs/ml-1m/<model>-sampled-softmax-n128-final.gin``) in
  ``--gr-python``
  (the reference venv with fbgemm-gpu-cpu). Its data is written once by
  ``../shared/reference/prep_gr_ml1m.py`` into ``<out-dir>/gr_data``. ``--no-anomaly`` turns
  off the ``set_detect_anomaly(True)`` the trainer enables (measure speed both ways).
  Environment variables ``HSTU_GR_SRC`` / ``HSTU_GR_PYTHON`` set both.
* **ours**: ``recsys_pipeline.models.hstu.HSTU`` / ``...sasrec.SASRec`` with the block of
  ``conf/generative_recommenders`` (the reference's configuration, ``<model>.ml1m`` over
  ``<model>.defaults``), on the reference's own converted sequences (``--file-order``: the
  ratings read by the project's MovieLens reader, same-second ratings in file order; the
  reference's pandas sort is not stable, so many same-second pairs are ordered differently).

The protocol (the reference's ``eval_metrics_v2_from_tensors``): per user, training = every
item but the last (each position predicts the next), test target = the last item, the query
made at the target's time (the reference has the target's timestamp in the sequence); full
ranking over every movie id of ``movies.dat`` (ours: an item table over those ids, so that
never-rated movies are negatives and candidates as in the reference), the history window
(the last ``maxlen`` items) excluded; ranks beyond 2,500 capped at 2,501. Reported: NDCG@10,
NDCG@50, HR@10, HR@50, MRR with the cap (the reference's), and ours also exact (uncapped MRR).
There is no validation split in the reference; ``--early-stopping`` adds a leg of ours that
holds out each user's second-to-last item for early stopping (``patience``) and then scores
the same test targets.

Example (accuracy, hours; 2 seeds, two runs at a time)::

    export HSTU_GR_SRC=../refrun/src/generative-recommenders-2e81fab
    export HSTU_GR_PYTHON=../refrun/venv/bin/python
    python benchmarks/hstu_reference.py --epochs 50 --seeds 1 2 --jobs 2
    python benchmarks/hstu_reference.py --epochs 2 --seeds 1 --jobs 1 --no-anomaly  # speed
    python benchmarks/hstu_reference.py --model sasrec --epochs 50 --seeds 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gru4rec_train_speed import run_process  # noqa: E402  (this folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
ML1M = SHARED / "data" / "real" / "movielens_1m_partial"
DRIVER = SHARED / "reference" / "drive_gr.py"
PREP = SHARED / "reference" / "prep_gr_ml1m.py"
ENV = "generative_recommenders"  # conf/<ENV>: the reference's configurations for ml1m
GIN = {
    "hstu": "configs/ml-1m/hstu-sampled-softmax-n128-final.gin",
    "sasrec": "configs/ml-1m/sasrec-sampled-softmax-n128-final.gin",
}
MAX_K = 2500  # the reference's cap (recsys_pipeline.evaluation.last_item.GR_MAX_RANK)
METRICS = ("ndcg@10", "ndcg@50", "hr@10", "hr@50", "mrr")
TOLERANCE = 0.03  # relative difference of the means allowed by the issue


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", type=Path, default=ML1M / "ratings.dat.gz")
    p.add_argument("--movies", type=Path, default=ML1M / "movies.dat")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="runs at once (speed: 1)")
    p.add_argument("--driver", type=Path, default=DRIVER)
    p.add_argument("--gr-src", default=os.environ.get("HSTU_GR_SRC"))
    p.add_argument("--gr-python", default=os.environ.get("HSTU_GR_PYTHON"))
    p.add_argument("--model", choices=sorted(GIN), default="hstu")
    p.add_argument("--gin", help="the reference's gin file (default: the model's ML-1M one)")
    p.add_argument("--no-anomaly", action="store_true", help="reference: anomaly detection off")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--reuse", action="store_true",
                   help="read the results already in --out-dir instead of training again")  # fmt: skip
    p.add_argument("--file-order", action="store_true",
                   help="ours: same-second ratings in ratings.dat's line order (default: the "
                        "order of the reference's own data, so both legs share targets)")  # fmt: skip
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="also run ours with a validation item and this patience")  # fmt: skip
    p.add_argument("--out-dir", type=Path, help="default: benchmarks/out/<model>_reference")
    p.add_argument("--child", choices=["ours"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--patience", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--sequences-from", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.gin = args.gin or GIN[args.model]
    args.out_dir = args.out_dir or ROOT / "benchmarks" / "out" / f"{args.model}_reference"
    return args


def model_config(model: str) -> dict[str, Any]:
    """``<model>.ml1m`` over ``<model>.defaults`` as ``kedro run --env generative_recommenders``
    reads them (conf/base + conf/generative_recommenders, deep-merged), without the run
    setting ``num_threads``."""
    from kedro.config import OmegaConfigLoader

    from recsys_pipeline.models.registry import resolve_params

    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env=ENV,
                               merge_strategy={"parameters": "soft"})  # fmt: skip
    params = resolve_params(loader["parameters"][model], "ml1m")
    params.pop("num_threads", None)
    return params


# ------------------------------------------------------------------------------- our leg
def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate our model once (in this process)."""
    import resource

    import numpy as np
    import polars as pl
    import torch

    from recsys_pipeline.datasets.sequences import read_sequences
    from recsys_pipeline.evaluation.last_item import capped_rank_metrics, evaluate_last_item
    from recsys_pipeline.models.registry import create_model

    torch.set_num_threads(args.threads)
    if args.sequences_from:  # the reference's sequences, in its order (ties included)
        gr = pl.read_csv(args.sequences_from, infer_schema_length=0)
        events = (
            gr.select(
                pl.col("user_id").cast(pl.Int64).alias("SessionId"),
                pl.col("sequence_item_ids").str.split(",").cast(pl.List(pl.Int64)).alias("ItemId"),
                pl.col("sequence_timestamps").str.split(",").cast(pl.List(pl.Int64)).alias("Time"),
            )
            .sort("SessionId", maintain_order=True)
            .explode(["ItemId", "Time"])
        )
    else:
        events = read_sequences("movielens", args.ratings.parent, variant="ml-1m",
                                file=args.ratings.name)  # fmt: skip
        events = events.rename({"UserId": "SessionId"})
    position = pl.int_range(pl.len()).over("SessionId")
    length = pl.len().over("SessionId")
    test = events.filter(position == length - 1)
    history = events.filter(position < length - 1)
    movies = sorted(
        int(line.split(b"::", 1)[0])
        for line in args.movies.read_bytes().splitlines()
        if line.strip()
    )
    universe = np.asarray(movies, dtype=np.int64)
    valid = None
    train = history
    if args.patience:
        valid = history.filter(position == length - 2)
        train = history.filter(position < length - 2)
    config = model_config(args.model) | {"num_epochs": args.epochs, "seed": args.seed,
                                         "device": "cpu", "patience": args.patience}  # fmt: skip
    model = create_model(args.model, config)
    params = model.params
    start = time.perf_counter()
    model.fit(train, valid=valid, item_ids=universe, progress=False)
    train_s = time.perf_counter() - start
    epoch_s = [h.seconds for h in model.history]
    n_rows = int((train.group_by("SessionId").len()["len"] >= 2).sum())
    start = time.perf_counter()
    result = evaluate_last_item(
        model, history, targets=test, user_key="SessionId", exclude_history="window",
        query_time="target", cutoffs=(10, 50), return_ranks=True,
    )  # fmt: skip
    metrics = capped_rank_metrics(result.ranks, (10, 50), MAX_K)
    return {
        "leg": "ours" if not args.patience else "ours_early_stopping",
        "model": args.model,
        "seed": args.seed,
        "epochs": args.epochs,
        "epochs_run": len(model.history),
        "best_epoch": model.best_epoch,
        "threads": args.threads,
        "train_s": train_s,
        "epoch_s_median": statistics.median(epoch_s) if epoch_s else None,
        "sequences_per_s": n_rows / statistics.median(epoch_s) if epoch_s else None,
        # supervised positions (next-item targets) per second
        "tokens_per_s": model.history[-1].n_targets / statistics.median(epoch_s)
        if epoch_s
        else None,
        "tokens_per_sequence": model.history[-1].n_targets / n_rows if n_rows else None,
        "eval_s": time.perf_counter() - start,
        "n_targets": result["n_targets"],
        "label": result.label(),
        "metrics": metrics,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params": params.to_dict(),
    }


# --------------------------------------------------------------------------- orchestration
def _child_ours(args: argparse.Namespace, seed: int, patience: int | None, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "ours", "--seed", str(seed),
           "--model", args.model,
           "--out", str(out), "--ratings", str(args.ratings), "--movies", str(args.movies),
           "--epochs", str(args.epochs), "--threads", str(args.threads)]  # fmt: skip
    cmd += ["--patience", str(patience)] if patience else []
    if not args.file_order:
        cmd += ["--sequences-from", str(_gr_data(args) / "ml-1m" / "sasrec_format.csv")]
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    with out.with_suffix(".log").open("w") as handle:
        subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)
    return json.loads(out.read_text())


def _gr_data(args: argparse.Namespace) -> Path:
    data = (args.out_dir / "gr_data").resolve()
    if not (data / "ml-1m" / "sasrec_format.csv").exists():
        subprocess.run([args.gr_python, str(PREP), "--ratings", str(args.ratings.resolve()),
                        "--movies", str(args.movies.resolve()), "--out-dir", str(data)],
                       check=True)  # fmt: skip
    return data


def _child_reference(args: argparse.Namespace, seed: int, data: Path) -> dict[str, Any]:
    tag = f"reference_seed{seed}"
    cmd = [args.gr_python, str(args.driver.resolve()), "--src", str(Path(args.gr_src).resolve()),
           "--gin-config", args.gin, "--data-dir", str(data), "--epochs", str(args.epochs),
           "--seed", str(seed), "--threads", str(args.threads),
           "--work-dir", str((args.out_dir / f"work_{seed}").resolve()),
           "--out-dir", str(args.out_dir.resolve()), "--tag", tag]  # fmt: skip
    cmd += ["--no-anomaly"] if args.no_anomaly else []
    rss = None
    if args.reuse and (args.out_dir / f"{tag}.json").exists():
        print(f"reference seed {seed}: reusing {args.out_dir / f'{tag}.json'}", flush=True)
    else:
        text, rss = run_process(cmd, dict(os.environ), args.out_dir)
        (args.out_dir / f"{tag}.log").write_text(text)
    raw = json.loads((args.out_dir / f"{tag}.json").read_text())
    final = raw["per_epoch"][-1]["metrics"]
    return {
        "leg": "reference",
        "seed": seed,
        "epochs": raw["epochs"],
        "threads": raw["threads"],
        "anomaly_detection": raw["anomaly_detection"],
        "train_s": raw["train"]["seconds"],
        "sequences_per_s": raw["train"].get("steady_sequences_per_s")
        or raw["train"]["sequences_per_s"],
        "eval_s": raw["eval"]["seconds"],
        "n_targets": final.get("n_eval"),
        "metrics": {k: float(final[k]) for k in METRICS},
        "peak_rss_gib": rss,
    }


def report(runs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The table (one line per run), the means per leg and ours relative to the reference."""
    lines = ["leg                   seed  epochs  train s   seq/s  " + "  ".join(
        f"{m:>8}" for m in METRICS)]  # fmt: skip
    for r in sorted(runs, key=lambda r: (r["leg"], r["seed"])):
        lines.append(
            f"{r['leg']:<21} {r['seed']:>4}  {r['epochs']:>6}  {r['train_s']:>7.0f}  "
            f"{r['sequences_per_s'] or float('nan'):>6.0f}  "
            + "  ".join(f"{r['metrics'][m]:>8.4f}" for m in METRICS)
        )
    summary: dict[str, Any] = {}
    legs = sorted({r["leg"] for r in runs})
    means = {
        leg: {m: statistics.fmean(r["metrics"][m] for r in runs if r["leg"] == leg)
              for m in METRICS}
        for leg in legs
    }  # fmt: skip
    summary["means"] = means
    if "reference" in means:
        for leg in (leg for leg in legs if leg != "reference"):
            rel = {m: (means[leg][m] - means["reference"][m]) / means["reference"][m]
                   for m in METRICS if means["reference"][m]}  # fmt: skip
            summary[f"{leg}_relative"] = rel
            lines.append(f"mean {leg} vs reference: " + ", ".join(
                f"{m} {v:+.2%} ({'within' if abs(v) <= TOLERANCE else 'OUTSIDE'} 3%)"
                for m, v in rel.items()))  # fmt: skip
        speeds = {leg: [r["sequences_per_s"] for r in runs if r["leg"] == leg] for leg in legs}
        if speeds.get("ours") and speeds["reference"]:
            ratio = statistics.median(speeds["ours"]) / statistics.median(speeds["reference"])
            summary["speed_ratio"] = ratio
            lines.append(f"training sequences/s, median: ours / reference = {ratio:.2f}x")
            per_seq = [r.get("tokens_per_sequence") for r in runs if r["leg"] == "ours"]
            if per_seq and per_seq[0]:
                ours_tok = statistics.median(r["tokens_per_s"] for r in runs if r["leg"] == "ours")
                ref_tok = statistics.median(speeds["reference"]) * per_seq[0]
                summary["tokens_per_s"] = {"ours": ours_tok, "reference": ref_tok}
                lines.append(
                    f"training tokens/s (supervised positions), median: ours {ours_tok:,.0f}, "
                    f"reference {ref_tok:,.0f} (its sequences/s x our {per_seq[0]:.1f} "
                    "positions per sequence: the same sequences)"
                )
    lines.append("protocol: full ranking over every movies.dat id, the history window "
                 "excluded, the last item of every user, query at the target's time (HSTU), ranks "
                 f"beyond {MAX_K} capped (reference's eval_metrics_v2)")  # fmt: skip
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "ours":
        record = run_ours(args)
        args.out.write_text(json.dumps(record, indent=1))
        return 0
    if not args.ratings.exists() or not args.movies.exists():
        print(f"data {args.ratings} / {args.movies} not found (../shared absent?)")
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    use_reference = not args.skip_reference and args.gr_src and args.gr_python
    if not use_reference and not args.skip_reference:
        print("reference leg skipped: set --gr-src/--gr-python (or HSTU_GR_SRC/HSTU_GR_PYTHON)")
    data = _gr_data(args) if use_reference else None
    load = os.getloadavg()[0]
    jobs: list[tuple[str, int]] = [("reference", s) for s in args.seeds if use_reference]
    jobs += [("ours", s) for s in args.seeds]
    jobs += [("ours_es", s) for s in args.seeds if args.early_stopping]

    def run(job: tuple[str, int]) -> dict[str, Any]:
        leg, seed = job
        t = time.perf_counter()
        if leg == "reference":
            assert data is not None
            record = _child_reference(args, seed, data)
        else:
            patience = args.early_stopping if leg == "ours_es" else None
            out = args.out_dir / f"{leg}_seed{seed}.json"
            if args.reuse and out.exists():
                print(f"{leg} seed {seed}: reusing {out}", flush=True)
                return json.loads(out.read_text())
            record = _child_ours(args, seed, patience, out)
        print(f"{leg} seed {seed}: done in {time.perf_counter() - t:.0f} s", flush=True)
        return record

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run, jobs))
    table, summary = report(runs)
    summary |= {"load_before": load, "load_after": os.getloadavg()[0], "jobs": args.jobs,
                "threads": args.threads, "epochs": args.epochs, "runs": runs}  # fmt: skip
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table)
    print(f"load average (1 min) before {load:.2f}, after {summary['load_after']:.2f}; "
          f"jobs {args.jobs}, threads {args.threads}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
