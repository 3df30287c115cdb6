"""The epoch loop shared by the trainable models: timing, progress bar, NaN guard, summary.

A model supplies the steps (any iterable) and a ``train_step(batch) -> (loss, n_targets)``
callable; :func:`run_epoch` runs them, shows a tqdm bar (mini-batches/s as the bar's rate,
targets/s and the running loss as postfix), stops with :class:`FloatingPointError` on a
non-finite loss and logs the one-line summary the reference prints
(``loss, seconds, mini-batches/s, targets/s``; ``log=False`` leaves that line to the caller, as
:func:`recsys_pipeline.training.loop.train_epochs` does to add the validation metric to it). The epoch loss is the mean of the step losses
weighted by the step's number of targets, as in the reference.

Reading a loss value from a GPU forces a synchronisation, so on an accelerator the losses are
summed on the device and checked every ``check_every`` steps; on the CPU every step is checked.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch

from recsys_pipeline.training.progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = ["EpochStats", "run_epoch"]

Batch = TypeVar("Batch")


@dataclass(frozen=True)
class EpochStats:
    """Summary of one training epoch.

    ``valid_metric`` is the validation metric measured after the epoch (``None``: not measured);
    :meth:`to_dict` leaves it out when it is ``None``, so records of runs without validation keep
    their keys.
    """

    epoch: int
    loss: float
    seconds: float
    n_batches: int
    n_targets: int
    valid_metric: float | None = None

    @property
    def batches_per_s(self) -> float:
        return self.n_batches / self.seconds if self.seconds > 0 else float("nan")

    @property
    def targets_per_s(self) -> float:
        return self.n_targets / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/MLflow friendly), rates included; ``valid_metric`` only when set."""
        record = asdict(self)
        if record["valid_metric"] is None:
            del record["valid_metric"]
        return {
            **record,
            "batches_per_s": self.batches_per_s,
            "targets_per_s": self.targets_per_s,
        }

    def summary(self, metric_name: str = "valid") -> str:
        """The reference's one-line epoch report (plus ``metric_name: value`` when measured)."""
        line = (
            f"epoch {self.epoch} --> loss: {self.loss:.6f} ({self.seconds:.2f}s) "
            f"[{self.batches_per_s:.2f} batches/s | {self.targets_per_s:.0f} targets/s]"
        )
        if self.valid_metric is not None:
            line += f" {metric_name}: {self.valid_metric:.6f}"
        return line


def run_epoch(
    batches: Iterable[Batch],
    train_step: Callable[[Batch], tuple[torch.Tensor, int]],
    *,
    epoch: int,
    device: torch.device,
    total: int | None = None,
    progress: bool = True,
    check_every: int | None = None,
    desc: str = "train",
    log: bool = True,
) -> EpochStats:
    """Run ``train_step`` on every batch of one epoch.

    Args:
        batches: the steps of the epoch.
        train_step: does one optimisation step; returns the step's loss (a 0-d tensor, detached)
            and its number of targets.
        epoch: 1-based epoch number (for messages).
        device: where the losses live.
        total: number of steps, for the progress bar.
        progress: show a tqdm bar.
        check_every: steps between loss checks (default: 1 on CPU, 100 on accelerators).
        desc: progress-bar label.
        log: log the epoch's summary line (off when the caller logs its own, longer line).

    Raises:
        FloatingPointError: a step produced a NaN or infinite loss.
    """
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 100
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_batches = n_targets = 0
    checked_batches = 0  # mini-batches already checked (and shown)
    bar = progress_bar(total, f"{desc} epoch {epoch}", "batches", enabled=progress, leave=False)
    t0 = time.perf_counter()

    def check() -> float:
        nonlocal checked_batches
        value = float(loss_sum)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"non-finite training loss ({value}) in epoch {epoch}, mini-batches "
                f"{checked_batches + 1}..{n_batches}: training stopped. Lower the learning "
                "rate, set grad_cap, or check the data and parameters."
            )
        if progress:
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.update(n_batches - checked_batches)
            bar.set_postfix(
                {
                    "loss": f"{value / max(n_targets, 1):.4f}",
                    "targets/s": f"{n_targets / elapsed:.0f}",
                },
                refresh=False,
            )
        checked_batches = n_batches
        return value

    try:
        for batch in batches:
            loss, n = train_step(batch)
            loss_sum += loss * n
            n_batches += 1
            n_targets += n
            if n_batches % check_every == 0:
                check()
        total_loss = check()
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    stats = EpochStats(
        epoch=epoch,
        loss=total_loss / n_targets if n_targets else float("nan"),
        seconds=seconds,
        n_batches=n_batches,
        n_targets=n_targets,
    )
    if log:
        logger.info(stats.summary())
    return stats
