"""BERT4Rec on short sessions: how much of its weakness is the learning-rate schedule, how much
the Cloze objective.

Data: a seeded generated event log (``synthetic.sessions.generate_events``, views only; the
size of the pipeline tests' tiny run: 20,000 events, 300 items, 2,000 users, about 5 items per
session), cut into days (``operations.replay.split_days``); the last ``--test-days`` days are
the test, the days before the training. Protocol: the session protocol of the platform
(``evaluation.evaluate``): every event after a test session's first is a target, all training
items ranked, nothing excluded; MRR@20 and Recall@20.

Every BERT4Rec variant is the same network (``--hidden`` units, 2 blocks, 2 heads, maxlen 10,
dropout 0.1, mask_prob 0.3) with ``--epochs`` epochs; only the optimiser schedule and the
masking differ:

* ``bert``: BERT's schedule (the original's: warm-up, then linear decay to 0), peak lr 1e-3;
* ``bert x3 epochs``: the same, three times the epochs;
* ``constant``: lr 5e-3, no warm-up, no decay;
* ``constant, last 0.5`` / ``constant, last 1.0``: the same, and half / all of the rows mask
  only their last item (``mask_last_prob``; the original: 1 / 11);

next to SASRec with the full cross-entropy loss (lr 5e-3, the same epochs) and the most-popular
and last-item co-occurrence baselines. One line per variant and seed, then the means.

    .venv/bin/python benchmarks/bert4rec_short_sessions.py --seeds 1 2
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys_pipeline.evaluation.evaluate import evaluate
from recsys_pipeline.models.baselines import LastItemCooccurrence, MostPopular
from recsys_pipeline.models.registry import create_model
from recsys_pipeline.operations.replay import split_days
from recsys_pipeline.synthetic.sessions import SyntheticConfig, generate_events

CONSTANT = {"lr": 0.005, "lr_schedule": "constant", "warmup_steps": 0}


def variants(epochs: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{label: (kind, parameters over the shared ones)}``."""
    return {
        "BERT4Rec, bert": ("bert4rec", {"lr": 0.001, "num_epochs": epochs}),
        "BERT4Rec, bert x3 epochs": ("bert4rec", {"lr": 0.001, "num_epochs": 3 * epochs}),
        "BERT4Rec, constant": ("bert4rec", CONSTANT | {"num_epochs": epochs}),
        "BERT4Rec, constant, last 0.5": (
            "bert4rec", CONSTANT | {"num_epochs": epochs, "mask_last_prob": 0.5},
        ),
        "BERT4Rec, constant, last 1.0": (
            "bert4rec", CONSTANT | {"num_epochs": epochs, "mask_last_prob": 1.0},
        ),
        "SASRec, cross-entropy": ("sasrec", {"loss": "ce", "lr": 0.005, "num_epochs": epochs}),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--test-days", type=int, default=3)
    ap.add_argument("--data-seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    config = SyntheticConfig(n_events=args.events, n_items=300, n_users=2_000, seed=args.data_seed)
    events, _ = generate_events(config)
    views = events.filter(pl.col("event") == "view").select(
        SessionId="session", ItemId="item", Time="ts_ms"
    )
    days = split_days(views, unit_seconds=0.001)
    train = pl.concat([f for _, f in days[: -args.test_days]])
    test = pl.concat([f for _, f in days[-args.test_days :]])
    mean_len = train.group_by("SessionId").len().get_column("len").mean()
    print(f"train {train.height:,} events ({mean_len:.1f} per session), test {test.height:,} "
          f"events in the last {args.test_days} days; session protocol, all items ranked")  # fmt: skip

    results: dict[str, list[tuple[float, float]]] = {}

    def record(label: str, model: Any, seconds: float, seed: int | None) -> None:
        res = evaluate(model, test, cutoffs=(20,))
        results.setdefault(label, []).append((float(res["mrr@20"]), float(res["recall@20"])))
        print(f"  {label:<32} seed {seed if seed is not None else '-'}: "
              f"MRR@20 {res['mrr@20']:.4f}  Recall@20 {res['recall@20']:.4f}  "
              f"({seconds:.0f} s)", flush=True)  # fmt: skip

    record("most popular", MostPopular.fit(train), 0.0, None)
    record("last-item co-occurrence", LastItemCooccurrence.fit(train), 0.0, None)
    shared = {"maxlen": 10, "hidden_units": args.hidden, "device": "cpu"}
    bert_shared = {"hidden_dropout": 0.1, "attention_dropout": 0.1, "mask_prob": 0.3,
                   "max_predictions": 8}  # fmt: skip
    for seed in args.seeds:
        for label, (kind, params) in variants(args.epochs).items():
            full = shared | (bert_shared if kind == "bert4rec" else {}) | params | {"seed": seed}
            t0 = time.perf_counter()
            model = create_model(kind, full).fit(train, progress=False)
            record(label, model, time.perf_counter() - t0, seed)

    print(f"\nmeans over seeds {args.seeds} ({args.epochs} epochs unless said otherwise)")
    print("| model | MRR@20 | Recall@20 |\n|---|---|---|")
    for label, values in results.items():
        mrr, rec = np.mean(values, axis=0)
        print(f"| {label} | {mrr:.4f} | {rec:.4f} |")


if __name__ == "__main__":
    main()
