"""BERT4Rec training and evaluation speed on ``beauty.txt``: ours against the Hugging Face
``BertForMaskedLM`` model the popular PyTorch ports train (Klenitskiy & Vasilev's
sasrec-bert4rec-recsys23 among them), in the same run, on the same rows and threads.

Data: BERT4Rec's ``amazon_beauty_bert4rec/beauty.txt`` (``../shared``), split leave-one-out as
``published_sequential.py`` does; the first ``--users`` users' training sequences (each user's
newest ``maxlen`` items; all users by default).

Both legs train the same network size with the same setting, Klenitskiy & Vasilev's for Beauty
(hidden 64, 2 layers, 2 heads, inner 256, maxlen 50, dropout 0.1, each position masked with
probability 0.2, Adam at a constant 1e-3, batch 128), for ``--epochs`` epochs; the **last**
epoch is timed (the first warms the allocator and caches). They differ in what a port built
on ``BertForMaskedLM`` computes: its head scores **every** position against every item
(``[batch, maxlen, items]`` logits, loss on the masked ones); ours scores only the masked
positions (``models/bert4rec.py``). The port's batches are built vectorised here (a padded
matrix, masks drawn with one ``torch.rand``), not row by row in a Python ``Dataset`` as the
ports do, so the ratio is not inflated by Python overhead.

Evaluation: the test item of ``--eval-users`` users after their training and validation items,
[MASK] appended, all items ranked with the history excluded: ours through the shared
``evaluate_last_item``, the port's by its forward pass over every position of the row, the
history set to minus infinity, top 10 (its rows built user by user in Python, as the ports'
collate functions do).

Each leg runs in its own process (peak RSS from ``os.wait4``), one after the other; the
1-minute load average is printed before each. Printed: sessions (rows) per second, tokens
(real input positions) per second and masked targets per second of the timed epoch, evaluation
users per second, peak RSS, and ours / the port's.

    .venv/bin/python benchmarks/bert4rec_speed.py --threads 1
    .venv/bin/python benchmarks/bert4rec_speed.py --users 5000 --eval-users 2000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
#: Klenitskiy & Vasilev's BERT4Rec on Beauty (their configs/BERT4Rec.yaml and datasets.py)
SETTING = {
    "maxlen": 50,
    "hidden_units": 64,
    "num_blocks": 2,
    "num_heads": 2,
    "inner_size": 256,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "mask_prob": 0.2,
    "mask_count": "bernoulli",
    "max_predictions": None,
    "mask_last_prob": 0.0,
    "lr": 0.001,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "lr_schedule": "constant",
    "grad_clip": None,
    "batch_size": 128,
}


def load(users: int | None) -> tuple[Any, Any, Any]:
    """``(train, valid, test)`` of beauty.txt, restricted to the first ``users`` users."""
    import polars as pl
    from published_sequential import splits  # noqa: E402  (this folder is on sys.path)

    train, valid, test = splits("beauty")
    if users:
        keep = train.get_column("SessionId").unique(maintain_order=True).head(users).implode()
        train, valid, test = (
            f.filter(pl.col("SessionId").is_in(keep)) for f in (train, valid, test)
        )
    return train, valid, test


def tokens(items: np.ndarray, seq: list[int]) -> np.ndarray:
    """The port's token indices of ``seq`` (item i -> its index in ``items`` + 2), items outside
    ``items`` (never in training) left out, as the ports' history filters do."""
    seq_arr = np.asarray(seq)
    pos = np.searchsorted(items, seq_arr)
    known = (pos < len(items)) & (items[np.minimum(pos, len(items) - 1)] == seq_arr)
    return pos[known] + 2


def leg_ours(args: argparse.Namespace) -> dict[str, Any]:
    from recsys_pipeline.evaluation.last_item import evaluate_last_item
    from recsys_pipeline.models.registry import create_model

    train, valid, test = load(args.users)
    params = SETTING | {"num_epochs": args.epochs, "seed": 1, "device": "cpu"}
    model = create_model("bert4rec", params).fit(train, progress=False)
    last = model.history[-1]
    lengths = (
        train.group_by("SessionId").len().get_column("len").clip(upper_bound=SETTING["maxlen"])
    )
    n_rows, n_tokens = len(lengths), int(lengths.sum())
    users = test.get_column("SessionId").unique(maintain_order=True).head(args.eval_users)
    t0 = time.perf_counter()
    res = evaluate_last_item(
        model, train, targets=test.filter(test["SessionId"].is_in(users.implode())),
        append=valid, cutoffs=(10,), user_key="SessionId",
    )  # fmt: skip
    eval_s = time.perf_counter() - t0
    return {
        "epoch_s": last.seconds, "rows": n_rows, "tokens": n_tokens, "targets": last.n_targets,
        "eval_s": eval_s, "eval_users": int(res["n_targets"]), "loss": last.loss,
    }  # fmt: skip


def leg_port(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import BertConfig, BertForMaskedLM

    train, valid, test = load(args.users)
    torch.manual_seed(1)
    maxlen = SETTING["maxlen"]
    items = np.sort(train.get_column("ItemId").unique().to_numpy())
    pad, mask = 0, 1  # item i -> token index(i) + 2
    seqs = train.group_by("SessionId", maintain_order=True).agg("ItemId")
    rows = np.zeros((seqs.height, maxlen), dtype=np.int64)  # right padded, as the ports
    for r, seq in enumerate(seqs.get_column("ItemId").to_list()):
        tail = np.searchsorted(items, seq[-maxlen:]) + 2
        rows[r, : len(tail)] = tail
    rows_t = torch.from_numpy(rows)
    config = BertConfig(
        vocab_size=len(items) + 2, hidden_size=SETTING["hidden_units"],
        num_hidden_layers=SETTING["num_blocks"], num_attention_heads=SETTING["num_heads"],
        intermediate_size=SETTING["inner_size"], max_position_embeddings=maxlen,
        hidden_dropout_prob=SETTING["hidden_dropout"], hidden_act="gelu_new",
        attention_probs_dropout_prob=SETTING["attention_dropout"], pad_token_id=pad,
    )  # fmt: skip
    model = BertForMaskedLM(config)
    opt = torch.optim.Adam(model.parameters(), lr=SETTING["lr"])
    batch = SETTING["batch_size"]
    epoch_s, n_targets, loss_sum = 0.0, 0, 0.0
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(rows_t))
        t0 = time.perf_counter()
        n_targets, loss_sum = 0, 0.0
        for start in range(0, len(order), batch):
            ids = rows_t[order[start : start + batch]]
            real = ids != pad
            chosen = (torch.rand(ids.shape) < SETTING["mask_prob"]) & real
            labels = torch.where(chosen, ids, torch.full_like(ids, -100))
            inputs = torch.where(chosen, torch.full_like(ids, mask), ids)
            out = model(input_ids=inputs, attention_mask=real.long(), labels=labels)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            n_targets += int(chosen.sum())
            loss_sum += float(out.loss)
        epoch_s = time.perf_counter() - t0
    # evaluation: training + validation items, [MASK] appended, every position scored
    model.eval()
    history = (
        train.vstack(valid).group_by("SessionId", maintain_order=True).agg("ItemId")
        .join(test.select("SessionId", target="ItemId"), on="SessionId")
        .head(args.eval_users)
    )  # fmt: skip
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, history.height, 256):
            part = history.slice(start, 256)
            seq_rows = [tokens(items, s) for s in part.get_column("ItemId").to_list()]
            ids = torch.zeros((len(seq_rows), maxlen), dtype=torch.long)
            last = torch.zeros(len(seq_rows), dtype=torch.long)
            for r, s in enumerate(seq_rows):
                tail = list(s[-(maxlen - 1) :]) + [mask]
                ids[r, : len(tail)] = torch.tensor(tail)
                last[r] = len(tail) - 1
            logits = model(input_ids=ids, attention_mask=(ids != pad).long()).logits
            scores = logits[torch.arange(len(ids)), last]
            scores[:, :2] = -torch.inf
            for r, s in enumerate(seq_rows):
                scores[r, torch.from_numpy(np.asarray(s))] = -torch.inf
            scores.topk(10, dim=1)
    eval_s = time.perf_counter() - t0
    return {
        "epoch_s": epoch_s, "rows": len(rows), "tokens": int((rows != pad).sum()),
        "targets": n_targets, "eval_s": eval_s, "eval_users": history.height,
        "loss": loss_sum / max(1, -(-len(rows) // batch)),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=None, help="first N users (default: all)")
    ap.add_argument("--eval-users", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--leg", choices=("ours", "port"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.leg:  # a child: one leg, its figures as JSON on the last line
        figures = (leg_ours if args.leg == "ours" else leg_port)(args)
        print(json.dumps(figures))
        return

    from gru4rec_train_speed import run_process  # noqa: E402  (this folder is on sys.path)

    results: dict[str, dict[str, Any]] = {}
    for leg in ("ours", "port"):
        load1 = os.getloadavg()[0]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--leg", leg,
               "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--eval-users", str(args.eval_users)]  # fmt: skip
        if args.users:
            cmd += ["--users", str(args.users)]
        text, rss = run_process(cmd, dict(os.environ), HERE)
        figures = json.loads(text.strip().splitlines()[-1])
        figures |= {"peak_rss_gib": rss, "load_before": load1}
        e = figures["epoch_s"]
        figures |= {"rows_per_s": figures["rows"] / e, "tokens_per_s": figures["tokens"] / e,
                    "targets_per_s": figures["targets"] / e,
                    "eval_users_per_s": figures["eval_users"] / figures["eval_s"]}  # fmt: skip
        results[leg] = figures
        print(f"{leg}: load average {load1:.2f} before; epoch {e:.1f} s, "
              f"{figures['rows_per_s']:,.0f} sessions/s, {figures['tokens_per_s']:,.0f} tokens/s, "
              f"{figures['targets_per_s']:,.0f} targets/s, loss {figures['loss']:.3f}; "
              f"evaluation {figures['eval_users_per_s']:,.0f} users/s; "
              f"peak RSS {rss:.2f} GiB", flush=True)  # fmt: skip
    ours, port = results["ours"], results["port"]
    print(f"\nours / the BertForMaskedLM port, {args.threads} thread(s): training "
          f"{ours['rows_per_s'] / port['rows_per_s']:.2f}x sessions/s, evaluation "
          f"{ours['eval_users_per_s'] / port['eval_users_per_s']:.2f}x users/s, peak RSS "
          f"{ours['peak_rss_gib'] / port['peak_rss_gib']:.2f}x")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"args": vars(args), "results": results}, indent=1, default=str)
        )


if __name__ == "__main__":
    main()
