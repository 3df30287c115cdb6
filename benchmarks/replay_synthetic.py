"""Day-by-day replay (Transformers4Rec's protocol) on a synthetic event log.

A seeded synthetic log (``recsys_pipeline.synthetic.sessions.generate_events``, views only) over
``--days`` days is cut into days (:func:`recsys_pipeline.operations.replay.split_days`, sessions whole on
the day of their first event). GRU4Rec is trained on day 1, evaluated on day 2, fine-tuned on
day 2, evaluated on day 3, ... (:func:`recsys_pipeline.operations.replay.replay`); MostPopular and
LastItemCooccurrence, refitted on all days before each evaluated day, are the baselines.
``--mode retrain_growing`` / ``retrain_sliding`` retrains GRU4Rec from scratch instead.

Prints the per-day table and the time-averaged metrics (mean over days and target-weighted);
``--json`` writes :meth:`ReplayResult.to_dict`, ``--plot`` the figure of ``--metric``.

Examples::

    .venv/bin/python benchmarks/replay_synthetic.py
    .venv/bin/python benchmarks/replay_synthetic.py --mode retrain_growing --json benchmarks/out/replay.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import polars as pl
import torch

from recsys_pipeline.operations.replay import MODES, plot_replay, replay, split_days
from recsys_pipeline.synthetic.sessions import SyntheticConfig, generate_events


def main() -> None:
    """Run the replay and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=7, help="days of synthetic data")
    ap.add_argument("--events", type=int, default=210_000, help="synthetic events in all")
    ap.add_argument("--items", type=int, default=3_000)
    ap.add_argument("--users", type=int, default=6_000)
    # defaults: conf/base/parameters_synthetic.yml (the default run's data)
    ap.add_argument("--p-follow", type=float, default=0.2, help="first-order signal share")
    ap.add_argument("--p-skip", type=float, default=0.65, help="second-order signal share")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--mode", choices=MODES, default="fine_tune")
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the initial training")
    ap.add_argument("--lr", type=float, default=0.1, help="Adagrad learning rate")
    ap.add_argument("--fine-tune-epochs", type=int, default=None, help="default: --epochs")
    ap.add_argument("--optimizer-state", choices=("carry", "reset"), default="carry")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--metric", default="mrr@20", help="metric of the plot")
    ap.add_argument("--json", type=Path, default=None, help="write the result as JSON here")
    ap.add_argument("--plot", type=Path, default=None, help="write the plot (png) here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    config = SyntheticConfig(
        n_events=args.events,
        n_items=args.items,
        n_users=args.users,
        start="2024-03-01",
        n_days=args.days,
        p_follow=args.p_follow,
        p_skip=args.p_skip,
        seed=args.seed,
    )
    events, _ = generate_events(config)
    views = events.filter(pl.col("event") == "view").select(
        SessionId="session", ItemId="item", Time="ts_ms"
    )
    days = split_days(views, unit_seconds=0.001)
    print(f"{views.height} views in {len(days)} days, {views['ItemId'].n_unique()} items")
    params = {
        "layers": [args.layers],
        "n_epochs": args.epochs,
        "batch_size": 64,
        "n_sample": 512,
        "learning_rate": args.lr,
        "loss": "cross-entropy",
        "device": "cpu",
        "seed": args.seed,
    }
    result = replay(
        days,
        params,
        model="gru4rec",
        mode=args.mode,
        fine_tune_epochs=args.fine_tune_epochs,
        optimizer_state=args.optimizer_state,
        cutoffs=(5, 10, 20),
    )
    wall = time.perf_counter() - t0

    metric_cols = [f"{n}/{m}" for n in result.models for m in ("recall@20", "mrr@20")]
    short = {
        c: c.replace("last_item_cooccurrence", "lastitem").replace("most_popular", "pop")
        for c in metric_cols
    }
    table = result.table.select(
        "day",
        pl.col("gru4rec/n_targets").alias("n_targets"),
        "n_new_items",
        pl.col("gru4rec/n_known_items").alias("n_known_items"),
        pl.col("gru4rec/train_seconds").round(1).alias("train_seconds"),
        *[pl.col(c).round(4).alias(short[c]) for c in metric_cols],
    )
    with pl.Config(tbl_rows=100, tbl_cols=100, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        print(
            f"\nmode={args.mode}, GRU4Rec layers={args.layers}, epochs={args.epochs}, "
            f"fine-tune epochs={args.fine_tune_epochs or args.epochs}, "
            f"optimizer={args.optimizer_state}"
        )
        print(table)
    print("\naverages over the evaluated days:")
    print(f"{'metric':<34}{'mean':>10}{'weighted':>10}")
    for name in result.models:
        for m in result.metrics:
            col = f"{name}/{m}"
            print(f"{col:<34}{result.mean[col]:>10.4f}{result.weighted_mean[col]:>10.4f}")
    print(f"\nwall time {wall:.1f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_replay(result, metric=args.metric).savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
