"""GRU4Rec at scale: the full SR-GNN Diginetica split against the official implementation.

Data: ``../shared/data/real/diginetica_srgnn/diginetica_srgnn_sessions.tsv.gz`` as given (no
further dedup or filtering): sessions ordered by ``SessionId``, events by ``Pos``, ``Time`` = the
running row index over that order; the given ``train`` / ``test`` split (906,140 train events,
43,097 items, 60,858 targets). Parameters: the Diginetica best parameters of
``conf/base/parameters_models.yml`` (``gru4rec.diginetica``, bpr-max), seed 1, 10 epochs,
``standard`` ties, cut-offs 1, 5, 10, 20.

The official implementation on this run (issue 3, measured on the 2-core development machine):
R@1 .0899, R@5 .2833, R@10 .4043, R@20 .5396, MRR@5 .1574, MRR@10 .1734, MRR@20 .1828;
~185 s per epoch, 36 s to evaluate, 8 s setup, 3.3 GB peak RSS. Those cost figures were recorded
on another day: they are printed next to ours as context, never as a ratio (a speed ratio is
measured in one run: ``gru4rec_train_speed.py`` / ``gru4rec_eval_speed.py`` with the official leg).

Printed: setup seconds (``fit`` minus its epochs), every epoch's summary, evaluation seconds and
targets/s, peak RSS (``ru_maxrss``), and the metrics next to the reference with the differences.
It takes tens of minutes on 2 CPU cores, so it is a benchmark, not a test.

    .venv/bin/python benchmarks/gru4rec_diginetica_srgnn.py
    .venv/bin/python benchmarks/gru4rec_diginetica_srgnn.py --epochs 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import polars as pl
import torch
import yaml

from recsys_pipeline.evaluation import evaluate
from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
from recsys_pipeline.models.registry import resolve_params

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "real" / "diginetica_srgnn"
FILE = "diginetica_srgnn_sessions.tsv.gz"
PARAMS_FILE = ROOT / "conf" / "base" / "parameters_models.yml"
CUTOFFS = (1, 5, 10, 20)

REFERENCE = {
    "recall@1": 0.0899,
    "recall@5": 0.2833,
    "recall@10": 0.4043,
    "recall@20": 0.5396,
    "mrr@5": 0.1574,
    "mrr@10": 0.1734,
    "mrr@20": 0.1828,
}
REFERENCE_COST = {"epoch_s": 185.0, "eval_s": 36.0, "setup_s": 8.0, "peak_rss_gib": 3.3}


def load(path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(train, test)``: SessionId, ItemId, Time (running row index over SessionId, Pos)."""
    events = (
        pl.read_csv(path, separator="\t")
        .sort(["SessionId", "Pos"])
        .with_row_index("Time")
        .with_columns(pl.col("Time").cast(pl.Int64))
    )
    cols = ["SessionId", "ItemId", "Time"]
    train = events.filter(pl.col("Split") == "train").select(cols)
    test = events.filter(pl.col("Split") == "test").select(cols)
    return train, test


def diginetica_params() -> dict:
    block = yaml.safe_load(PARAMS_FILE.read_text())["gru4rec"]
    params = resolve_params(block, "diginetica")
    params.pop("num_threads", None)  # a run setting of the pipeline, not a model parameter
    return dict(params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / FILE)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.data.exists():
        print(f"data not found: {args.data} (needs ../shared next to the checkout)")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    train, test = load(args.data)
    load_s = time.perf_counter() - t0
    print(
        f"data: train {train.height:,} events / {train['SessionId'].n_unique():,} sessions / "
        f"{train['ItemId'].n_unique():,} items; test {test.height:,} events "
        f"({load_s:.1f} s to read)"
    )
    params = diginetica_params() | {
        "n_epochs": args.epochs,
        "seed": args.seed,
        "device": args.device,
    }
    print("params:", ",".join(f"{k}={v}" for k, v in params.items()))

    t0 = time.perf_counter()
    model = GRU4Rec(GRU4RecParams.from_dict(params)).fit(train, progress=args.progress)
    fit_s = time.perf_counter() - t0
    epoch_s = [s.seconds for s in model.history]
    setup_s = fit_s - sum(epoch_s)
    for stats in model.history:
        print(stats.summary())

    t0 = time.perf_counter()
    result = evaluate(model, test, cutoffs=CUTOFFS, mode="standard", progress=args.progress)
    eval_s = time.perf_counter() - t0
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(f"\ndevice {model.device}, {torch.get_num_threads()} threads")
    print(f"{'metric':<10} {'ours':>8} {'official':>9} {'diff':>8} {'rel':>7}")
    metrics = {}
    for name, ref in REFERENCE.items():
        ours = float(result[name])
        metrics[name] = ours
        print(f"{name:<10} {ours:8.4f} {ref:9.4f} {ours - ref:+8.4f} {(ours - ref) / ref:+7.1%}")
    mean_epoch = sum(epoch_s) / len(epoch_s)
    targets = int(result["n_targets"])
    print(
        f"targets {targets:,}; setup {setup_s:.2f} s, epoch {mean_epoch:.1f} s mean, "
        f"evaluation {eval_s:.1f} s = {targets / eval_s:,.0f} targets/s, peak RSS "
        f"{rss_gib:.2f} GiB (the official's, recorded on another day, not a ratio: setup ~8 s, "
        "epoch ~185 s, evaluation ~36 s, ~3.3 GB)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "params": params,
                    "metrics": metrics,
                    "reference": REFERENCE,
                    "reference_cost": REFERENCE_COST,
                    "n_targets": targets,
                    "setup_s": setup_s,
                    "epoch_s": epoch_s,
                    "history": [s.to_dict() for s in model.history],
                    "eval_s": eval_s,
                    "peak_rss_gib": rss_gib,
                    "threads": torch.get_num_threads(),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
