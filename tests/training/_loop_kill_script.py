"""A tiny next-item training run through ``train_epochs``, for the loop tests.

Imported by ``test_loop.py`` (:func:`make_setup`, :func:`train`) and run as a script by its
kill test::

    python tests/training/_loop_kill_script.py CKPT_DIR OUT [--marker FILE] [--epochs N]

With ``--marker``, the run stops inside epoch 3 (after its first optimizer step), writes the
marker file and waits (at most a minute) to be killed; when the marker already exists (the
rerun), it does not wait. ``OUT`` receives the final state_dict (``torch.save``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from recsys_pipeline.training.loop import LoopConfig, TrainResult, train_epochs

N_ITEMS = 40
N_TRAIN = 320
BATCH = 32
WAIT_EPOCH = 3


class TinyNextItem(nn.Module):
    """Embedding -> dropout -> linear: item ``[B]`` -> next-item logits ``[B, N]``."""

    def __init__(self, n_items: int = N_ITEMS, dim: int = 16, dropout: float = 0.3) -> None:
        super().__init__()
        self.emb = nn.Embedding(n_items, dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, n_items)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.emb(items)))


@dataclass
class Setup:
    """Everything one training run needs, built from a seed."""

    model: TinyNextItem
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    neg_gen: torch.Generator
    x: torch.Tensor
    y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    seed: int

    def batches(self, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's shuffled mini-batches: a function of (seed, epoch) only."""
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(
            self.seed * 1000 + epoch))  # fmt: skip
        return [(self.x[i], self.y[i]) for i in order.split(BATCH)]

    def loss_fn(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Cross-entropy plus a small penalty on 4 sampled negatives (drawn from ``neg_gen``)."""
        x, y = batch
        logits = self.model(x)  # [B, N]
        negs = torch.randint(N_ITEMS, (len(x), 4), generator=self.neg_gen)  # [B, 4]
        penalty = F.softplus(logits.float().gather(1, negs)).mean()
        return F.cross_entropy(logits.float(), y) + 0.1 * penalty, len(x)

    def validate(self) -> float:
        """Negative validation cross-entropy (higher is better)."""
        return -float(F.cross_entropy(self.model(self.valid_x), self.valid_y))


def make_setup(seed: int = 0) -> Setup:
    """Data (fixed), model, Adam and a per-step LR decay, all from ``seed``."""
    data = torch.Generator().manual_seed(12345)
    x = torch.randint(N_ITEMS, (N_TRAIN + 64,), generator=data)
    noise = torch.rand(len(x), generator=data) < 0.2
    y = torch.where(noise, torch.randint(N_ITEMS, (len(x),), generator=data), (3 * x + 1) % N_ITEMS)
    torch.manual_seed(seed)
    model = TinyNextItem()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.99**step)
    return Setup(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        neg_gen=torch.Generator().manual_seed(seed + 1),
        x=x[:N_TRAIN],
        y=y[:N_TRAIN],
        valid_x=x[N_TRAIN:],
        valid_y=y[N_TRAIN:],
        seed=seed,
    )


def train(
    checkpoint_dir: Path | None,
    n_epochs: int = 4,
    *,
    seed: int = 0,
    fingerprint: str = "tiny-v1",
    marker: Path | None = None,
) -> tuple[Setup, TrainResult]:
    """Train the tiny model with validation (no early stopping) and per-epoch checkpoints."""
    setup = make_setup(seed)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(setup.batches(epoch)):
            if marker is not None and epoch == WAIT_EPOCH and i == 1 and not marker.exists():
                marker.write_text("inside epoch 3\n")  # one step of epoch 3 done
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # the parent kills us here
                    time.sleep(0.05)
            yield batch

    config = LoopConfig(n_epochs=n_epochs, checkpoint_dir=checkpoint_dir, progress=False)
    result = train_epochs(
        setup.model,
        setup.optimizer,
        batches,
        setup.loss_fn,
        config=config,
        device=torch.device("cpu"),
        validate=setup.validate,
        scheduler=setup.scheduler,
        fingerprint=fingerprint,
        n_batches=lambda epoch: N_TRAIN // BATCH,
        extra_state={"negatives": setup.neg_gen},
    )
    return setup, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    torch.set_num_threads(1)
    setup, _ = train(args.checkpoint_dir, args.epochs, marker=args.marker)
    torch.save(setup.model.state_dict(), args.out)


if __name__ == "__main__":
    main()
