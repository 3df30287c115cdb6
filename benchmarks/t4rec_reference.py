"""XLNet-MLM side by side with Transformers4Rec (the reference), same data, configuration,
epochs and evaluation: accuracy of both and the training speed of both, on the same threads.

Data: ``../shared/data/real/yoochoose1_64_srgnn/yoochoose1_64_srgnn_sessions.tsv.gz`` converted
once by ``../shared/reference/prep_t4r_yoochoose.py`` (run by the reference's Python) into
``<out-dir>/data/{train,test}.parquet`` (one row per session, ``item_id-list``). Both legs keep
each session's last 20 items and the sessions with >= 2 of them.

* **reference**: ``../shared/reference/drive_t4r.py`` (``--driver``) run by ``--t4r-python``
  (a venv with ``transformers4rec==23.12.0``: recipe in ``../shared/reference/README.md``;
  environment variable ``T4R_PYTHON``): the model built as the paper-reproduction script does,
  with the paper's YOOCHOOSE XLNet-MLM settings, AdamW at a constant learning rate; its own
  evaluation (``testing=True``: the last item replaced in place by the mask, all items ranked,
  history not excluded).
* **ours**: ``recsys_pipeline.models.xlnet_mlm.XLNetMLM`` with the ``xlnet_mlm.yoochoose`` block
  of ``conf/base/parameters_models.yml`` (the same settings), ``--epochs`` epochs; evaluated
  with the shared last-item protocol on the test sessions: the last item masked in place,
  full ranking, history not excluded, test items never seen in training counted as misses
  (the reference ranks every item id), NDCG@10/20 and Recall@10/20.

Printed: per run the metrics, training seconds and sessions/s; the means per leg; the relative
difference of the means (the goal of the issue: within 3 %) and the speed ratio (goal: ours at
least 3x per epoch on the same threads). ``--jobs 1`` on a quiet machine for speed.

    export T4R_PYTHON=../refrun/venv_t4r/bin/python
    python benchmarks/t4rec_reference.py --epochs 1 --seeds 1 2          # hours on 1 thread
    python benchmarks/t4rec_reference.py --epochs 1 --seeds 1 --max-steps 5 --limit 3000  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gru4rec_train_speed import run_process  # noqa: E402  (this folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
TSV = SHARED / "data/real/yoochoose1_64_srgnn/yoochoose1_64_srgnn_sessions.tsv.gz"
REFERENCE = SHARED / "reference"
MAX_LEN = 20
TOLERANCE = 0.03
METRICS = ("ndcg@10", "ndcg@20", "recall@10", "recall@20")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tsv", type=Path, default=TSV)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="runs at once (speed: 1)")
    p.add_argument("--t4r-python", default=os.environ.get("T4R_PYTHON"))
    p.add_argument("--driver", type=Path, default=REFERENCE / "drive_t4r.py")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/out/t4rec_reference")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--max-steps", type=int, help="smoke (reference only): stop after N steps")
    p.add_argument("--limit", type=int, help="smoke (ours only): the first N training sessions")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="ours: a parameter over the xlnet_mlm.yoochoose block, e.g. attend_padding=true",
    )  # fmt: skip
    p.add_argument(
        "--reference-dir", type=Path,
        help="with --skip-reference: compare with the reference runs of an earlier --out-dir "
        "(same data, configuration, epochs, seeds)",
    )  # fmt: skip
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------- our leg
def _frame(path: Path) -> Any:
    """The parquet's sessions as events (``SessionId``, ``ItemId``, ``Time`` = position), each
    session's last 20 items, sessions with >= 2 of them."""
    import polars as pl

    sessions = pl.read_parquet(path).select(
        pl.col("session_id").alias("SessionId"), pl.col("item_id-list").list.tail(MAX_LEN)
    )
    sessions = sessions.filter(pl.col("item_id-list").list.len() >= 2)
    return (
        sessions.explode("item_id-list")
        .rename({"item_id-list": "ItemId"})
        .with_columns(pl.int_range(pl.len()).over("SessionId").alias("Time"))
    )


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    import resource

    import polars as pl
    import torch
    import yaml

    from recsys_pipeline.evaluation.last_item import evaluate_last_item
    from recsys_pipeline.models.registry import create_model, resolve_params

    torch.set_num_threads(args.threads)
    data = args.out_dir / "data"
    train, test = _frame(data / "train.parquet"), _frame(data / "test.parquet")
    if args.limit:
        keep = train["SessionId"].unique(maintain_order=True).head(args.limit)
        train = train.filter(pl.col("SessionId").is_in(keep.implode()))
    block = yaml.safe_load((ROOT / "conf/base/parameters_models.yml").read_text())["xlnet_mlm"]
    params = dict(resolve_params(block, "yoochoose"))
    params.pop("num_threads", None)
    params |= {"num_epochs": args.epochs, "seed": args.seed, "device": "cpu", "maxlen": MAX_LEN}
    for item in args.set:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    model = create_model("xlnet_mlm", params)
    start = time.perf_counter()
    model.fit(train, progress=False)
    train_s = time.perf_counter() - start
    n_rows = int((train.group_by("SessionId").len()["len"] >= 2).sum())
    t0 = time.perf_counter()
    result = evaluate_last_item(
        model, test, exclude_history=False, cutoffs=(10, 20), user_key="SessionId",
        unknown_targets="miss",
    )  # fmt: skip
    eval_s = time.perf_counter() - t0
    epoch_s = [h.seconds for h in model.history]
    return {
        "leg": "ours",
        "seed": args.seed,
        "epochs": args.epochs,
        "train_s": train_s,
        "sessions_per_s": n_rows / statistics.median(epoch_s) if epoch_s else None,
        "metrics": {m: float(result[m]) for m in METRICS},
        "n_targets": int(result["n_targets"]),
        "n_missed": int(result["n_missed"]),
        "eval_s": eval_s,
        "final_loss": model.history[-1].loss if model.history else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "protocol": result.label(),
        "set": list(args.set),
    }


# --------------------------------------------------------------------------- orchestration
def prepare_data(args: argparse.Namespace) -> None:
    data = args.out_dir / "data"
    if (data / "train.parquet").exists() and (data / "test.parquet").exists():
        return
    if not args.t4r_python:
        sys.exit("the parquet files are written by the reference's Python: set --t4r-python")
    subprocess.run([args.t4r_python, str(REFERENCE / "prep_t4r_yoochoose.py"), "--tsv",
                    str(args.tsv), "--out-dir", str(data)], check=True)  # fmt: skip


def _child_ours(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    out = args.out_dir / f"ours_seed{seed}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--seed", str(seed),
           "--out", str(out), "--epochs", str(args.epochs), "--threads", str(args.threads),
           "--out-dir", str(args.out_dir)]  # fmt: skip
    cmd += ["--limit", str(args.limit)] if args.limit else []
    cmd += ["--set", *args.set] if args.set else []
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    with out.with_suffix(".log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    return json.loads(out.read_text())


def _child_reference(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    tag = f"reference_seed{seed}"
    cmd = [args.t4r_python, str(args.driver.resolve()), "--data-dir", str(args.out_dir / "data"),
           "--work-dir", str(args.out_dir / "work"), "--out-dir", str(args.out_dir), "--tag", tag,
           "--epochs", str(args.epochs), "--seed", str(seed), "--threads", str(args.threads),
           "--max-len", str(MAX_LEN)]  # fmt: skip
    cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    text, rss = run_process(cmd, dict(os.environ), args.out_dir)
    (args.out_dir / f"{tag}.log").write_text(text)
    return _reference_record(json.loads((args.out_dir / f"{tag}.json").read_text()), seed, rss)


def _reference_record(raw: dict[str, Any], seed: int, rss: float | None) -> dict[str, Any]:
    m = raw["eval"]["metrics"]

    def pick(name: str) -> float:
        return next(v for k, v in m.items() if k.endswith(name.replace("@", "_at_"))
                    or k.endswith(name))  # fmt: skip

    return {
        "leg": "reference",
        "seed": seed,
        "epochs": raw["epochs"],
        "train_s": raw["train"]["seconds"],
        "sessions_per_s": raw["train"]["sequences_per_s"],
        "metrics": {name: float(pick(name)) for name in METRICS},
        "raw_metric_names": sorted(m),
        "eval_s": raw["eval"]["seconds"],
        "final_loss": raw["train"]["final_loss"],
        "peak_rss_gib": rss,
    }


def report(runs: list[dict[str, Any]]) -> str:
    lines = [
        f"{'leg':<10}{'seed':>5}{'train s':>9}{'sess/s':>8}" + "".join(f"{m:>11}" for m in METRICS)
    ]
    for r in sorted(runs, key=lambda r: (r["leg"], r["seed"])):
        lines.append(f"{r['leg']:<10}{r['seed']:>5}{r['train_s']:>9.0f}{r['sessions_per_s']:>8.0f}"
                     + "".join(f"{r['metrics'][m]:>11.4f}" for m in METRICS))  # fmt: skip
    legs = {leg: [r for r in runs if r["leg"] == leg] for leg in ("ours", "reference")}
    if legs["ours"] and legs["reference"]:
        for m in METRICS:
            a = statistics.fmean(r["metrics"][m] for r in legs["ours"])
            b = statistics.fmean(r["metrics"][m] for r in legs["reference"])
            rel = (a - b) / b if b else float("nan")
            ok = "within" if abs(rel) <= TOLERANCE else "OUTSIDE"
            lines.append(f"mean {m}: ours {a:.4f} reference {b:.4f} relative {rel:+.2%} "
                         f"({ok} {TOLERANCE:.0%})")  # fmt: skip
        ratio = statistics.median(r["sessions_per_s"] for r in legs["ours"]) / statistics.median(
            r["sessions_per_s"] for r in legs["reference"]
        )
        lines.append(f"training sessions/s, median: ours / reference = {ratio:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        args.out.write_text(json.dumps(run_ours(args), indent=1))
        return 0
    if not args.tsv.exists():
        print(f"data not found: {args.tsv} (needs ../shared)")
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    prepare_data(args)
    load = os.getloadavg()[0]
    jobs = [("reference", s) for s in args.seeds if not args.skip_reference and args.t4r_python]
    jobs += [("ours", s) for s in args.seeds]
    from concurrent.futures import ThreadPoolExecutor

    def run(job: tuple[str, int]) -> dict[str, Any]:
        leg, seed = job
        return _child_ours(args, seed) if leg == "ours" else _child_reference(args, seed)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(run, jobs))
    if args.skip_reference and args.reference_dir:
        for seed in args.seeds:
            raw = json.loads((args.reference_dir / f"reference_seed{seed}.json").read_text())
            if raw["epochs"] != args.epochs:
                sys.exit(f"{args.reference_dir}: the reference ran {raw['epochs']} epochs")
            runs.append(_reference_record(raw, seed, None))
    table = report(runs)
    summary = {"runs": runs, "load_before": load, "load_after": os.getloadavg()[0],
               "threads": args.threads, "jobs": args.jobs, "epochs": args.epochs}  # fmt: skip
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table)
    print(f"load average (1 min) before {load:.2f}, after {summary['load_after']:.2f}; "
          f"jobs {args.jobs}, threads {args.threads}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
