"""SASRec side by side with the reference PyTorch port (pmixer/SASRec.pytorch), same data, same
configuration, same epochs, several seeds: accuracy under the reference's own sampled protocol,
our full-ranking figures next to it, and the training speed of both.

Both legs run as child processes of this script with ``torch.set_num_threads(--threads)``:

* **reference**: ``../shared/reference/drive_pmixer.py`` (``--driver``), which imports the port's
  ``model.py`` / ``utils.py`` unmodified from ``--pmixer-src`` (default: the original layout at
  commit 9f6a02b, query-only layer norm) and trains with the loop of its ``main.py``, run by
  ``--pmixer-python`` (a venv with torch and numpy). Environment variables
  ``SASREC_PMIXER_SRC`` / ``SASREC_PMIXER_PYTHON`` set both. Its evaluation: leave-one-out,
  target vs 100 negatives drawn uniformly (with replacement) from the items outside the user's
  training items, 10,000 random users, NDCG@10 / HR@10.
* **ours**: ``recsys_pipeline.models.sasrec.SASRec`` on the project's reader
  (``datasets.sequences.read_sequences``) and leave-one-out split (``preprocessing.sequences``;
  users with fewer than 3 items only train, as the reference), evaluated with the shared
  last-item protocol: the **legacy sampled** ranking (100 uniform negatives drawn without
  replacement from outside the user's whole sequence, 10,000 seeded users: labelled
  ``sampled100_*``), and the **full ranking** over all items, with the user's history excluded
  (default protocol) and without exclusion. Test input = training items + the validation item.

The configuration is the reference's for Amazon data (maxlen 50, hidden 50, 2 blocks, 1 head,
dropout 0.5, lr 0.001, batch 128, BCE with one negative per position). ``--variant pmixer``
runs ours as the port's network (``attend_padding``: the padding computed and attended,
``out_projection``, ``init="pmixer"``) to attribute a gap between the legs to those
differences; ``--variant pmixer_order`` adds the port's order of the users
(``row_order="once"``: its sampler shuffles them once, so every epoch visits them in nearly
the same order; ours draws a new order every epoch). The report lists every run, the mean per leg, the relative difference of the means (the goal: within 2 %), the
full-ranking figures, and the training sequences/s of each leg. With ``--jobs`` > 1 runs share
the CPU: use the speed figures of a ``--jobs 1`` run on a quiet machine only.

Examples::

    export SASREC_PMIXER_SRC=../refrun/src/SASRec.pytorch-9f6a02b/python
    export SASREC_PMIXER_PYTHON=../refrun/venv/bin/python
    python benchmarks/sasrec_reference.py --epochs 100 --seeds 1 2 --jobs 2   # accuracy (hours)
    python benchmarks/sasrec_reference.py --epochs 3 --seeds 1 --jobs 1       # speed, quiet machine
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
DEFAULT_DATA = SHARED / "data" / "real" / "amazon_video_games_sasrec" / "Video.txt"
DRIVER = SHARED / "reference" / "drive_pmixer.py"
#: our network as the original TF code (default) or as the port computes it (its padding,
#: output projection and initialisation)
VARIANTS = {
    "tf": {},
    "pmixer": {"attend_padding": True, "out_projection": True, "init": "pmixer"},
    # and the port's sampler: the users shuffled once, every epoch in nearly that order
    "pmixer_order": {
        "attend_padding": True,
        "out_projection": True,
        "init": "pmixer",
        "row_order": "once",
    },
}
CONFIG = {
    "maxlen": 50,
    "hidden_units": 50,
    "num_blocks": 2,
    "num_heads": 1,
    "dropout_rate": 0.5,
    "lr": 0.001,
    "batch_size": 128,
    "l2_emb": 0.0,
}
TOLERANCE = 0.02  # relative difference of the means allowed by the issue


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="'user item' text file")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="runs at once (speed: 1)")
    p.add_argument("--driver", type=Path, default=DRIVER)
    p.add_argument("--pmixer-src", default=os.environ.get("SASREC_PMIXER_SRC"))
    p.add_argument("--pmixer-python", default=os.environ.get("SASREC_PMIXER_PYTHON"))
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "out" / "sasrec_reference")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--bucket", type=int, default=0, help="ours: SASRecParams.bucket")
    p.add_argument(
        "--variant", choices=sorted(VARIANTS), default="tf",
        help="ours: 'tf' (the original network, default), 'pmixer' (the port's attention: "
        "padding attended, output projection, its initialisation) or 'pmixer_order' (that and "
        "the port's order of users: shuffled once, not every epoch), to attribute a gap",
    )  # fmt: skip
    p.add_argument("--save-model", action="store_true", help="ours: keep each trained model")
    p.add_argument(
        "--item-universe", choices=["train", "file"], default="train",
        help="ours: the item table holds the training items (default) or, as the port's, every "
        "id 1..max of the file: the items seen only as a validation/test item then get rows, "
        "are drawn as training negatives and as evaluation candidates, and are never unknown",
    )  # fmt: skip
    p.add_argument(
        "--reference-means", type=float, nargs=2, metavar=("NDCG", "HR"),
        help="with --skip-reference: the reference's mean test NDCG@10 / HR@10 of an earlier "
        "run (same data, configuration, epochs, seeds) for the comparison lines",
    )  # fmt: skip
    p.add_argument("--child", choices=["ours"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------- our leg
def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate our SASRec once (in this process); the record as a dict."""
    import resource

    import numpy as np
    import polars as pl
    import torch

    from recsys_pipeline.datasets.sequences import read_sequences
    from recsys_pipeline.evaluation.last_item import evaluate_last_item
    from recsys_pipeline.models.sasrec import SASRec, SASRecParams
    from recsys_pipeline.preprocessing.sequences import leave_one_out

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    events = read_sequences("pairs", args.data.parent, args.data.name)
    split = leave_one_out(events, min_items=3)
    key = {"UserId": "SessionId"}
    train, valid, test = (f.rename(key) for f in (split.train, split.valid, split.test))
    load_s = time.perf_counter() - start
    params = SASRecParams(
        **CONFIG, num_epochs=args.epochs, loss="bce", seed=args.seed, device="cpu",
        bucket=args.bucket, **VARIANTS[args.variant],
    )  # fmt: skip
    model = SASRec(params)
    universe = None
    if args.item_universe == "file":  # the port's table: ids 1 .. the largest id of the file
        universe = np.arange(1, int(events.get_column("ItemId").max()) + 1, dtype=np.int64)
    start = time.perf_counter()
    model.fit(train, item_ids=universe, progress=False)
    train_s = time.perf_counter() - start
    rows = sum(h.n_batches for h in model.history[:1])  # batches of one epoch
    n_rows = int((train.group_by("SessionId").len()["len"] >= 2).sum())
    epoch_s = [h.seconds for h in model.history]

    def last_item(name: str, frame: pl.DataFrame, **kwargs: Any) -> dict[str, float]:
        t = time.perf_counter()
        result = evaluate_last_item(
            model, frame, user_key="SessionId", cutoffs=(10,), seed=args.seed, **kwargs
        )
        seconds = time.perf_counter() - t
        out = {f"{name}.{k}": float(v) for k, v in result.items() if "@" in k}
        out[f"{name}.seconds"] = seconds
        out[f"{name}.users_per_s"] = result["n_targets"] / seconds
        return out

    # users too short to split (no valid/test item) are input only, never targets
    metrics: dict[str, float] = {}
    sampled = {"ranking": "sampled", "n_negatives": 100, "max_users": 10_000}
    metrics |= last_item("valid_sampled", train, targets=valid, **sampled)
    metrics |= last_item("test_sampled", train, targets=test, append=valid, **sampled)
    # like the port: users whose test item never occurs in training are evaluated (as misses)
    metrics |= last_item(
        "test_sampled_all", train, targets=test, append=valid, unknown_targets="miss", **sampled
    )
    metrics |= last_item("test_full_excl", train, targets=test, append=valid)
    metrics |= last_item("test_full_incl", train, targets=test, append=valid, exclude_history=False)
    if args.save_model:
        model.save(args.out.with_suffix(""), optimizer=False)
    return {
        "leg": "ours",
        "variant": args.variant,
        "item_universe": args.item_universe,
        "n_items": model.n_items,
        "seed": args.seed,
        "epochs": args.epochs,
        "threads": args.threads,
        "load_s": load_s,
        "train_s": train_s,
        "epoch_s_median": statistics.median(epoch_s) if epoch_s else None,
        "batches_per_epoch": rows,
        "sequences_per_s": n_rows / statistics.median(epoch_s) if epoch_s else None,
        "final_loss": model.history[-1].loss if model.history else None,
        "metrics": metrics,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params": params.to_dict(),
    }


# --------------------------------------------------------------------------- orchestration
def _child_ours(args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "ours", "--seed", str(seed),
           "--out", str(out), "--data", str(args.data), "--epochs", str(args.epochs),
           "--threads", str(args.threads), "--bucket", str(args.bucket),
           "--variant", args.variant, "--item-universe", args.item_universe]  # fmt: skip
    cmd += ["--save-model"] if args.save_model else []
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    log = out.with_suffix(".log")
    with log.open("w") as handle:
        subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)
    return json.loads(out.read_text())


def _child_reference(args: argparse.Namespace, seed: int, out_dir: Path) -> dict[str, Any]:
    tag = f"reference_seed{seed}"
    cmd = [args.pmixer_python, str(args.driver.resolve()), "--src", str(Path(args.pmixer_src).resolve()),
           "--data", str(args.data.resolve()), "--maxlen", str(CONFIG["maxlen"]),
           "--hidden-units", str(CONFIG["hidden_units"]), "--num-blocks", str(CONFIG["num_blocks"]),
           "--num-heads", str(CONFIG["num_heads"]), "--dropout-rate", str(CONFIG["dropout_rate"]),
           "--lr", str(CONFIG["lr"]), "--batch-size", str(CONFIG["batch_size"]),
           "--epochs", str(args.epochs), "--seed", str(seed), "--threads", str(args.threads),
           "--work-dir", str(out_dir / "work"), "--out-dir", str(out_dir), "--tag", tag]  # fmt: skip
    text, rss = run_process(cmd, dict(os.environ), out_dir)  # its own peak RSS (wait4)
    (out_dir / f"{tag}.log").write_text(text)
    raw = json.loads((out_dir / f"{tag}.json").read_text())
    return {
        "leg": "reference",
        "seed": seed,
        "epochs": raw["epochs"],
        "threads": raw["threads"],
        "train_s": raw["train"]["seconds"],
        "sequences_per_s": raw["train"]["sequences_per_s"],
        "final_loss": raw["train"].get("final_loss"),
        "metrics": {
            "valid_sampled.sampled100_ndcg@10": raw["eval"]["metrics"]["valid_ndcg@10"],
            "valid_sampled.sampled100_hr@10": raw["eval"]["metrics"]["valid_hr@10"],
            "test_sampled.sampled100_ndcg@10": raw["eval"]["metrics"]["test_ndcg@10"],
            "test_sampled.sampled100_hr@10": raw["eval"]["metrics"]["test_hr@10"],
            "eval.seconds": raw["eval"]["seconds"],
        },
        "src": raw.get("src_tag"),
        "peak_rss_gib": rss,
    }


def _mean(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r["metrics"].get(key) for r in runs if r["metrics"].get(key) is not None]
    return statistics.fmean(values) if values else None


def report(
    runs: list[dict[str, Any]], reference_means: list[float] | None = None
) -> tuple[str, dict[str, Any]]:
    """The table and the summary record. ``test_sampled`` skips users whose test item never
    occurs in training; ``test_sampled_all`` counts them as misses, as the port's evaluation
    does (it scores every user): the like-for-like comparison."""
    ours = [r for r in runs if r["leg"] == "ours"]
    ref = [r for r in runs if r["leg"] == "reference"]
    lines = [
        "leg        seed  epochs  train s  seq/s   test NDCG@10  test HR@10   (sampled-100, legacy)"
    ]
    for r in sorted(runs, key=lambda r: (r["leg"], r["seed"])):
        m = r["metrics"]
        lines.append(
            f"{r['leg']:<10} {r['seed']:>4}  {r['epochs']:>6}  {r['train_s']:>7.0f}  "
            f"{r['sequences_per_s'] or float('nan'):>6.0f}   "
            f"{m['test_sampled.sampled100_ndcg@10']:.4f}        {m['test_sampled.sampled100_hr@10']:.4f}"
        )
    summary: dict[str, Any] = {"n_ours": len(ours), "n_reference": len(ref)}
    given = dict(zip(("ndcg", "hr"), reference_means or (), strict=False))
    for name in ("test_sampled.sampled100_ndcg@10", "test_sampled.sampled100_hr@10",
                 "test_sampled_all.sampled100_ndcg@10", "test_sampled_all.sampled100_hr@10"):  # fmt: skip
        a = _mean(ours, name)
        b = _mean(ref, name.replace("test_sampled_all", "test_sampled"))
        if b is None and given:
            b = given["ndcg" if "ndcg" in name else "hr"]
        summary[name] = {"ours": a, "reference": b}
        if a is not None and b is not None:
            rel = (a - b) / b
            summary[name]["relative"] = rel
            lines.append(
                f"mean {name}: ours {a:.4f}  reference {b:.4f}  relative {rel:+.2%} "
                f"({'within' if abs(rel) <= TOLERANCE else 'OUTSIDE'} {TOLERANCE:.0%})"
            )
    for name in ("test_full_excl", "test_full_incl"):
        ndcg, hr = _mean(ours, f"{name}.ndcg@10"), _mean(ours, f"{name}.recall@10")
        if ndcg is not None:
            label = "history excluded" if name.endswith("excl") else "history not excluded"
            lines.append(f"ours full ranking ({label}): NDCG@10 {ndcg:.4f}  HR@10 {hr:.4f}")
            summary[name] = {"ndcg@10": ndcg, "hr@10": hr}
    for r in ours:
        m = r["metrics"]
        lines.append(
            f"ours seed {r['seed']}: evaluation users/s: sampled "
            f"{m['test_sampled.users_per_s']:.0f}, full ranking "
            f"{m['test_full_excl.users_per_s']:.0f}; peak RSS {r['peak_rss_gib']:.2f} GiB"
        )
    for r in ref:
        lines.append(
            f"reference seed {r['seed']}: evaluation (valid + test, sampled) "
            f"{r['metrics']['eval.seconds']:.1f} s; peak RSS {r.get('peak_rss_gib', float('nan')):.2f} "
            "GiB (its sampler process not counted)"
        )
    speeds = {
        leg: [r["sequences_per_s"] for r in runs if r["leg"] == leg]
        for leg in ("ours", "reference")
    }
    if speeds["ours"] and speeds["reference"]:
        ratio = statistics.median(speeds["ours"]) / statistics.median(speeds["reference"])
        summary["speed_ratio"] = ratio
        lines.append(f"training sequences/s, median: ours / reference = {ratio:.2f}x")
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "ours":
        record = run_ours(args)
        args.out.write_text(json.dumps(record, indent=1))
        return 0
    if not args.data.exists():
        print(f"data file {args.data} not found (../shared absent?)")
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    use_reference = not args.skip_reference and args.pmixer_src and args.pmixer_python
    if not use_reference and not args.skip_reference:
        print("reference leg skipped: set --pmixer-src/--pmixer-python "
              "(or SASREC_PMIXER_SRC/SASREC_PMIXER_PYTHON)")  # fmt: skip
    load = os.getloadavg()[0]
    jobs = [("reference", seed) for seed in args.seeds if use_reference]  # the longer runs first
    jobs += [("ours", seed) for seed in args.seeds]

    def run(job: tuple[str, int]) -> dict[str, Any]:
        leg, seed = job
        t = time.perf_counter()
        if leg == "ours":
            name = f"ours_{args.variant}" + ("_universe" if args.item_universe == "file" else "")
            record = _child_ours(args, seed, args.out_dir / f"{name}_seed{seed}.json")
        else:
            record = _child_reference(args, seed, args.out_dir)
        print(f"{leg} seed {seed}: done in {time.perf_counter() - t:.0f} s", flush=True)
        return record

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run, jobs))
    table, summary = report(runs, args.reference_means)
    summary |= {"load_before": load, "load_after": os.getloadavg()[0], "jobs": args.jobs,
                "threads": args.threads, "epochs": args.epochs, "runs": runs}  # fmt: skip
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table)
    print(f"load average (1 min) before {load:.2f}, after {summary['load_after']:.2f}; "
          f"jobs {args.jobs}, threads {args.threads}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
