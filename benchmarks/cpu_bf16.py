"""CPU bf16 autocast vs fp32 for a small transformer next-item model, through the shared loop.

    .venv/bin/python benchmarks/cpu_bf16.py                       # 1 and 2 threads, 20 steps
    .venv/bin/python benchmarks/cpu_bf16.py --steps 200 --repeats 3 --threads 1 2

Model: item embedding (3,000 items, d 64) + learned positions (maxlen 50), 2 pre-LN
``nn.TransformerEncoder`` layers (2 heads, feed-forward 256, dropout 0.1), causal attention,
scores against the tied item embedding, full-softmax cross-entropy at every position (Adam,
lr 3e-3, batch 128). Data: synthetic Markov-chain sequences (the next item follows from the
current one with probability 0.6, else a Zipf-popular item), so the loss can fall.

Each run trains through :func:`recsys_pipeline.training.loop.train_epochs` from the same initial
weights and batches: epoch 1 = ``--warmup`` steps (not timed: oneDNN kernel creation), epoch 2 =
``--steps`` timed steps; ``cpu_bf16=True`` is the bf16 run (the table shows the dtype actually
used: fp32 where the CPU has no native bf16). Reported per run: steps/s and tokens/s of epoch 2,
its mean training loss, and the held-out cross-entropy and HR@10 of the last position computed in
fp32 after training (the accuracy effect). fp32 and bf16 runs are interleaved (their order
alternates per repeat) and the bf16/fp32 speed ratio is taken from the medians of the same run.
Timings are only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recsys_pipeline.training.loop import LoopConfig, cpu_supports_bf16, train_epochs


class SeqEncoder(nn.Module):
    """Causal transformer next-item model: items ``[B, L]`` (ids 1..N) -> logits ``[B, L, N]``."""

    def __init__(self, n_items: int, dim: int, maxlen: int, layers: int, heads: int) -> None:
        super().__init__()
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(maxlen, dim)
        self.drop = nn.Dropout(0.1)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer(
            "causal", nn.Transformer.generate_square_subsequent_mask(maxlen), persistent=False
        )
        nn.init.normal_(self.item.weight, std=0.02)  # small tied scores at the start
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        length = items.shape[1]
        h = self.item(items) * math.sqrt(self.item.embedding_dim)
        h = self.drop(h + self.pos.weight[:length])  # [B, L, D]
        h = self.encoder(h, mask=self.causal[:length, :length], is_causal=True)
        return self.norm(h) @ self.item.weight[1:].T  # [B, L, N]


def markov_sequences(n: int, length: int, n_items: int, seed: int) -> torch.Tensor:
    """``[n, length]`` item ids in 1..n_items: next = f(current) w.p. 0.6, else Zipf-popular."""
    gen = torch.Generator().manual_seed(seed)
    follow = torch.randperm(n_items, generator=gen)  # the chain's successor of each item
    zipf = 1.0 / torch.arange(1, n_items + 1, dtype=torch.float64) ** 0.8
    seqs = torch.empty(n, length, dtype=torch.long)
    seqs[:, 0] = torch.multinomial(zipf, n, replacement=True, generator=gen)
    for t in range(1, length):
        jump = torch.rand(n, generator=gen) < 0.4
        popular = torch.multinomial(zipf, n, replacement=True, generator=gen)
        seqs[:, t] = torch.where(jump, popular, follow[seqs[:, t - 1]])
    return seqs + 1


@dataclass
class Run:
    threads: int
    mode: str
    dtype: str
    steps_per_s: float
    tokens_per_s: float
    train_loss: float
    valid_loss: float
    valid_hr10: float


def one_run(args: argparse.Namespace, data: torch.Tensor, valid: torch.Tensor, mode: str) -> Run:
    torch.manual_seed(args.seed)
    model = SeqEncoder(args.items, args.dim, args.maxlen, args.layers, args.heads)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    n_steps = {1: args.warmup, 2: args.steps}

    def batches(epoch: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        rows = torch.randint(len(data), (n_steps[epoch], args.batch_size), generator=gen)
        return [data[r] for r in rows]  # [B, L + 1] each

    def loss_fn(batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = model(batch[:, :-1])  # [B, L, N]
        targets = batch[:, 1:] - 1  # [B, L]
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()), targets.numel()

    config = LoopConfig(n_epochs=2, cpu_bf16=mode == "bf16", progress=False, desc=mode)
    result = train_epochs(model, optimizer, batches, loss_fn, config=config, device=torch.device("cpu"))  # fmt: skip
    timed = result.history[1]
    with torch.no_grad():  # fp32 evaluation of the last position
        logits = model(valid[:, :-2])[:, -1]  # [V, N]
        target = valid[:, -2] - 1
        valid_loss = float(F.cross_entropy(logits, target))
        hr10 = float((logits.topk(10).indices == target[:, None]).any(1).float().mean())
    return Run(
        threads=torch.get_num_threads(),
        mode=mode,
        dtype=str(result.amp_dtype or torch.float32).removeprefix("torch."),
        steps_per_s=timed.batches_per_s,
        tokens_per_s=timed.targets_per_s,
        train_loss=timed.loss,
        valid_loss=valid_loss,
        valid_hr10=hr10,
    )


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--maxlen", type=int, default=50)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    flags = cpu_flags()
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"torch.backends.cpu.get_cpu_capability(): {torch.backends.cpu.get_cpu_capability()}")
    print(
        f"/proc/cpuinfo: avx512_bf16 {'avx512_bf16' in flags}, amx_bf16 {'amx_bf16' in flags}; "
        f"cpu_supports_bf16(): {cpu_supports_bf16()}"
    )
    print(
        f"model: d {args.dim}, {args.layers} layers, {args.heads} heads, maxlen {args.maxlen}, "
        f"{args.items} items, batch {args.batch_size}; {args.steps} timed steps after "
        f"{args.warmup} warm-up, {args.repeats} repeat(s)\n"
    )
    data = markov_sequences(20_000, args.maxlen + 1, args.items, seed=1)
    valid = markov_sequences(2_000, args.maxlen + 2, args.items, seed=2)

    runs: list[Run] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for repeat in range(args.repeats):
            for mode in ("fp32", "bf16") if repeat % 2 == 0 else ("bf16", "fp32"):
                runs.append(one_run(args, data, valid, mode))
                r = runs[-1]
                print(
                    f"threads {threads} {mode:4s} ({r.dtype:8s}) {r.steps_per_s:6.2f} steps/s "
                    f"{r.tokens_per_s:8.0f} tokens/s | train loss {r.train_loss:.4f} | valid "
                    f"loss {r.valid_loss:.4f} HR@10 {r.valid_hr10:.4f}"
                )

    print("\nmedians (same run)")
    print(
        "threads | fp32 steps/s | bf16 steps/s | bf16/fp32 | valid loss fp32 / bf16 | HR@10 fp32 / bf16"
    )
    for threads in args.threads:
        by_mode = {
            m: [r for r in runs if r.threads == threads and r.mode == m] for m in ("fp32", "bf16")
        }
        speed = {m: statistics.median(r.steps_per_s for r in rs) for m, rs in by_mode.items()}
        loss = {m: statistics.median(r.valid_loss for r in rs) for m, rs in by_mode.items()}
        hr = {m: statistics.median(r.valid_hr10 for r in rs) for m, rs in by_mode.items()}
        print(
            f"{threads:7d} | {speed['fp32']:12.2f} | {speed['bf16']:12.2f} | "
            f"{speed['bf16'] / speed['fp32']:9.2f} | {loss['fp32']:.4f} / {loss['bf16']:.4f}"
            f"        | {hr['fp32']:.4f} / {hr['bf16']:.4f}"
        )


if __name__ == "__main__":
    main()
