"""NeuMF speed on synthetic ML-20m-sized data (CPU): epoch sampling, training, evaluation, memory.

    .venv/bin/python benchmarks/neumf_speed.py                 # 20M interactions, 138k x 27k
    .venv/bin/python benchmarks/neumf_speed.py --scale 0.1     # 2M interactions, same catalog

Data: users drawn with a long-tailed activity, items with a power-law popularity, duplicates
removed (numpy, vectorised). Training throughput is measured over ``--train-batches`` mini-batches
of the real training step (BCE, Adam, NeuMF 64 / 256-256-128-64) after building one epoch's samples
(positives + 4 negatives each) on the device; the full-epoch time is an *extrapolation*
(samples/epoch / measured samples/s), said so in the output. Evaluation: ``--eval-users`` users,
sampled (1 + 100 candidates) and full ranking over all items with the training items excluded.
Peak RSS is the process's ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
import polars as pl
import torch

from recsys_pipeline.evaluation.user_ranking import full_ranking, sampled_ranking
from recsys_pipeline.models.neumf import NeuMF, NeuMFNetwork, NeuMFParams, _TrainStep
from recsys_pipeline.training.interactions import (
    PositiveSet,
    UserItemData,
    epoch_samples,
    iterate_batches,
)


def synthetic(n_inter: int, n_users: int, n_items: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    activity = rng.pareto(1.5, n_users) + 1.0
    users = rng.choice(n_users, n_inter, p=activity / activity.sum())
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = rng.permutation(n_items)[
        np.minimum(np.searchsorted(np.cumsum(pop / pop.sum()), rng.random(n_inter)), n_items - 1)
    ]
    keys = np.unique(users.astype(np.int64) * n_items + items)
    return pl.DataFrame({"UserId": keys // n_items, "ItemId": keys % n_items})


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 20M interactions")
    ap.add_argument("--users", type=int, default=138_493)
    ap.add_argument("--items", type=int, default=26_744)
    ap.add_argument("--batch-size", type=int, default=2**14)
    ap.add_argument("--train-batches", type=int, default=100)
    ap.add_argument("--eval-users", type=int, default=2000)
    ap.add_argument("--negative-mode", default="approximate")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    t0 = time.perf_counter()
    frame = synthetic(int(20_000_263 * args.scale), args.users, args.items, 0)
    data = UserItemData.from_frame(frame)
    print(
        f"data: {frame.height:,} distinct interactions, {data.n_users:,} users, "
        f"{data.n_items:,} items ({time.perf_counter() - t0:.1f} s to generate + index)"
    )

    params = NeuMFParams(batch_size=args.batch_size, negative_mode=args.negative_mode, device="cpu")
    device = torch.device("cpu")
    users_t, items_t = torch.from_numpy(data.users), torch.from_numpy(data.items)
    positives = (
        PositiveSet(data.users, data.items, data.n_items, device)
        if args.negative_mode == "exact"
        else None
    )
    t0 = time.perf_counter()
    samples = epoch_samples(
        users_t, items_t, data.n_items, params.negative_samples, args.negative_mode, positives,
        torch.Generator().manual_seed(1),
    )  # fmt: skip
    t_sample = time.perf_counter() - t0
    print(
        f"epoch samples ({args.negative_mode}): {len(samples):,} in {t_sample:.2f} s "
        f"({len(samples) / t_sample / 1e6:.1f} M samples/s), peak RSS {rss_gb():.2f} GB"
    )

    net = NeuMFNetwork(data.n_users, data.n_items, params)
    net.reset_parameters(torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(net.parameters(), lr=params.learning_rate, betas=(0.25, 0.5))
    n_total = math.ceil(len(samples) / args.batch_size)
    step = _TrainStep(net, opt, None, None, params, n_total, 1)
    batches = iterate_batches(samples, args.batch_size)
    step(next(batches))  # warm-up
    t0 = time.perf_counter()
    n = 0
    for _, batch in zip(range(args.train_batches), batches):
        loss, k = step(batch)
        n += k
    t_train = time.perf_counter() - t0
    rate = n / t_train
    print(
        f"training: {args.train_batches} batches x {args.batch_size} = {n:,} samples in "
        f"{t_train:.1f} s -> {rate:,.0f} samples/s (loss {float(loss):.4f}); "
        f"EXTRAPOLATED full epoch ({len(samples):,} samples): {len(samples) / rate / 60:.1f} min"
    )

    model = NeuMF(params)
    model.user_ids, model.item_ids, model.net = data.user_ids, data.item_ids, net.eval()
    rng = np.random.default_rng(2)
    eval_users = rng.choice(data.user_ids, args.eval_users, replace=False)
    test = frame.filter(pl.col("UserId").is_in(eval_users)).group_by("UserId").first()
    negs = pl.DataFrame(
        {"UserId": np.repeat(test["UserId"].to_numpy(), 100),
         "ItemId": rng.integers(0, data.n_items, 100 * test.height)}
    )  # fmt: skip
    res = sampled_ranking(model, test, negs)
    print(f"sampled ranking: {res['n_users']:.0f} users, {res['users_per_s']:,.0f} users/s")
    res = full_ranking(model, test, frame, progress=False)
    print(
        f"full ranking (train items excluded): {res['n_users']:.0f} users x {data.n_items:,} "
        f"items, {res['users_per_s']:,.0f} users/s -> all {data.n_users:,} users: "
        f"{data.n_users / res['users_per_s'] / 60:.1f} min (extrapolated)"
    )
    print(f"peak RSS: {rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
