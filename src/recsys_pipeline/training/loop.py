"""The epoch loop shared by the models of the platform.

:func:`train_epochs` trains a module for ``n_epochs`` epochs: for every mini-batch it runs
``zero_grad`` -> ``loss_fn(batch)`` (under autocast when mixed precision is on) -> backward
(through a :class:`torch.amp.GradScaler` for fp16) -> optional gradient-norm clipping ->
``optimizer.step()`` -> optional per-step ``scheduler.step()``. The inner loop is
:func:`recsys_pipeline.training.trainer.run_epoch` (progress bar with mini-batches/s and
targets/s, NaN guard, target-weighted epoch loss). After every epoch it may

* call ``validate()`` (module in eval mode, under ``torch.no_grad()``, no autocast) and log the
  metric in the epoch's one summary line; with ``patience`` it stops after that many epochs
  without improvement, and with ``restore_best`` it loads the best epoch's weights (kept in
  memory as copied CPU tensors) at the end;
* write a checkpoint for resume (``checkpoint_dir``), see below.

Mixed precision (:func:`amp_dtype`): ``amp="auto"`` is bf16 autocast on CUDA (fp16 with a
GradScaler where the GPU has no bf16) and full precision elsewhere; ``"bf16"`` / ``"fp16"``
force a dtype on CUDA; ``"off"`` is full precision everywhere. bf16 autocast on the CPU is a
separate opt-in (``cpu_bf16=True``; used only where the CPU computes bf16 natively, see
:func:`cpu_supports_bf16`), because fp32 stays the default where fidelity to a reference matters.
:func:`amp_dtype`, :func:`autocast_context` and :func:`grad_scaler_for` are public so that models
with their own step (NeuMF's ``_amp_dtype`` has the same CUDA rules) can share the policy.

Checkpoints and resume
----------------------
After every finished epoch the loop writes ``checkpoint_dir/checkpoint.pt`` atomically (a temp
file in the same directory, fsync, ``os.replace``), so a kill leaves either the previous or the
new checkpoint, never a torn one. It holds plain dicts, tensors, strings and numbers only (the
history as a JSON string) and is read with ``torch.load(..., weights_only=True)``: nothing is
ever unpickled. Contents: the module's ``state_dict``, the optimizer's (and GradScaler's and
scheduler's) state, the RNG states (torch CPU; CUDA when training on CUDA; numpy's and Python's
global generators with ``host_rng=True``), the ``extra_state`` objects (e.g. a negative sampler's
``torch.Generator``), the epoch number, the history, the early-stopping state with the best
epoch's weights, and the caller's ``fingerprint``.

On start, a checkpoint with the same fingerprint is loaded and training continues at the next
epoch; one with another fingerprint (or unreadable) is ignored with a warning and overwritten by
the new run. The fingerprint is the caller's digest of everything that determines the run
(parameters, data version, seed); a checkpoint is only as safe as that string.

Resume is bit-exact when ``batches(epoch)`` depends only on (seed, epoch) and every other
random draw comes from the torch global RNG or an ``extra_state`` generator: a run killed
during epoch 3 and started again ends with the same weights as an uninterrupted run (the
killed epoch is redone from the end of epoch 2). The checkpoint stays after a successful run
(a rerun then finds nothing left to train and restores the final state); the caller deletes
the directory when it no longer needs it, or sets ``cleanup=True``.

Not handled (yet): several processes (DDP: only rank 0 should write checkpoints), gradient
accumulation, resuming within an epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pickle
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import nn

from recsys_pipeline.storage.partial import partial_suffix
from recsys_pipeline.training.trainer import EpochStats, run_epoch

logger = logging.getLogger(__name__)

__all__ = [
    "AMP_MODES",
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "SCHEDULER_INTERVALS",
    "LoopConfig",
    "Stateful",
    "TrainResult",
    "amp_dtype",
    "autocast_context",
    "cpu_supports_bf16",
    "grad_scaler_for",
    "history_from_json",
    "read_checkpoint",
    "remove_checkpoint",
    "train_epochs",
    "write_checkpoint",
]

AMP_MODES = ("auto", "off", "bf16", "fp16")
SCHEDULER_INTERVALS = ("step", "epoch")
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1

B = TypeVar("B")


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` (weights_only-loadable state)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any: ...


# ------------------------------------------------------------------------- mixed precision


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast can pay.

    Other CPUs run bf16 autocast too, but emulated, which is slower than fp32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def amp_dtype(amp: str, device: torch.device, *, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; ``None`` means full precision.

    On CUDA: ``"auto"`` is bf16 where the GPU supports it and fp16 otherwise, ``"bf16"`` and
    ``"fp16"`` are taken literally, ``"off"`` is ``None`` (NeuMF's ``_amp_dtype`` rules). On the
    CPU: ``None`` unless ``cpu_bf16`` (then bf16 when :func:`cpu_supports_bf16`, else ``None``
    with a warning); an explicit ``"bf16"`` / ``"fp16"`` without ``cpu_bf16`` is ignored with a
    warning. Other devices: ``None``. ``"off"`` always wins.

    Raises:
        ValueError: ``amp`` is not one of :data:`AMP_MODES`.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if device.type == "cpu" and cpu_bf16:
        if cpu_supports_bf16():
            return torch.bfloat16
        logger.warning("cpu_bf16 ignored: this CPU has no native bf16 (avx512_bf16 / AMX)")
        return None
    if amp in ("bf16", "fp16"):
        logger.warning(
            "amp=%s ignored on %s: mixed precision is used on CUDA only (cpu_bf16=True turns on "
            "bf16 autocast on a CPU)",
            amp,
            device,
        )
    return None


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler_for(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A :class:`torch.amp.GradScaler` for fp16 autocast, ``None`` for any other dtype."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


# ------------------------------------------------------------------------------ config/result


@dataclass(frozen=True)
class LoopConfig:
    """Settings of :func:`train_epochs`.

    Attributes:
        n_epochs: epochs to train (numbered from 1).
        amp: ``"auto"``, ``"off"``, ``"bf16"`` or ``"fp16"`` (see :func:`amp_dtype`).
        cpu_bf16: bf16 autocast on CPUs with native bf16 (off by default: fidelity first).
        patience: stop after this many epochs without a better validation metric (a strictly
            better value counts; NaN never does); ``None`` = no early stopping. Needs ``validate``.
        restore_best: with ``validate``, load the best epoch's weights at the end.
        grad_clip: clip the gradients' global L2 norm to this value (``None``: no clipping).
        scheduler_interval: ``"step"``: ``scheduler.step()`` after every optimizer step (warm-up
            and decay schedules); ``"epoch"``: after every epoch (``ReduceLROnPlateau`` gets the
            validation metric).
        checkpoint_dir: write ``checkpoint.pt`` there after every epoch and resume from it.
        cleanup: delete the checkpoint (and the directory if then empty) after a successful run.
        host_rng: also checkpoint numpy's and Python's global RNG (for ``batches`` / ``loss_fn``
            that draw from them; better: draw from an ``extra_state`` torch generator).
        progress: show the tqdm progress bar.
        check_every: mini-batches between NaN checks (``run_epoch``'s default when ``None``).
        desc: label of the progress bar and of the log lines.
        metric_name: name of the validation metric in the log lines.
    """

    n_epochs: int
    amp: str = "auto"
    cpu_bf16: bool = False
    patience: int | None = None
    restore_best: bool = True
    grad_clip: float | None = None
    scheduler_interval: str = "step"
    checkpoint_dir: Path | None = None
    cleanup: bool = False
    host_rng: bool = False
    progress: bool = True
    check_every: int | None = None
    desc: str = "train"
    metric_name: str = "valid"

    def __post_init__(self) -> None:
        errors = []
        if self.n_epochs < 0:
            errors.append(f"n_epochs must be >= 0, got {self.n_epochs}")
        if self.amp not in AMP_MODES:
            errors.append(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.patience is not None and self.patience < 1:
            errors.append(f"patience must be >= 1 or None, got {self.patience}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            errors.append(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.scheduler_interval not in SCHEDULER_INTERVALS:
            errors.append(
                f"scheduler_interval must be one of {SCHEDULER_INTERVALS}, "
                f"got {self.scheduler_interval!r}"
            )
        if errors:
            raise ValueError("; ".join(errors))
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, Path):
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))


@dataclass
class TrainResult:
    """What :func:`train_epochs` did.

    Attributes:
        history: one :class:`EpochStats` per finished epoch (resumed epochs included), with
            ``valid_metric`` set when ``validate`` was given.
        best_epoch: epoch with the best validation metric (``None`` without validation).
        best_metric: its metric.
        stopped_early: early stopping ended the run before ``n_epochs``.
        restored_best: the best epoch's weights were loaded at the end.
        resumed_from: last finished epoch found in the checkpoint (``None``: fresh start).
        amp_dtype: the autocast dtype used (``None``: full precision).
    """

    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float | None = None
    stopped_early: bool = False
    restored_best: bool = False
    resumed_from: int | None = None
    amp_dtype: torch.dtype | None = None


@dataclass
class _Best:
    epoch: int
    metric: float
    state: dict[str, torch.Tensor]  # copied CPU tensors


# ---------------------------------------------------------------------------- the step


class _OptimStep:
    """One mini-batch: zero_grad, loss under autocast, backward, clip, step, scheduler."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Any], tuple[torch.Tensor, int]],
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        scaler: torch.amp.GradScaler | None,
        grad_clip: float | None,
        scheduler: Any = None,
    ) -> None:
        self.optimizer, self.loss_fn, self.scheduler = optimizer, loss_fn, scheduler
        self.device, self.dtype, self.scaler, self.grad_clip = device, dtype, scaler, grad_clip
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, batch: Any) -> tuple[torch.Tensor, int]:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.dtype):
            loss, n_targets = self.loss_fn(batch)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach().float(), int(n_targets)


# ------------------------------------------------------------------------------ the loop


def train_epochs(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterable[B]],
    loss_fn: Callable[[B], tuple[torch.Tensor, int]],
    *,
    config: LoopConfig,
    device: torch.device,
    validate: Callable[[], float] | None = None,
    higher_is_better: bool = True,
    scheduler: Any = None,
    fingerprint: str = "",
    n_batches: Callable[[int], int] | None = None,
    extra_state: Mapping[str, torch.Generator | Stateful] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train ``module`` for ``config.n_epochs`` epochs (resuming from a checkpoint if any).

    Args:
        module: the network, already on ``device``; left in eval mode at the end.
        optimizer: over (some of) ``module``'s parameters.
        batches: epoch number (1-based) -> that epoch's mini-batches. For a bit-exact resume it
            must depend only on (seed, epoch), e.g. ``torch.Generator().manual_seed(seed +
            epoch)``, never on state carried over from earlier epochs.
        loss_fn: mini-batch -> (0-d loss with grad, number of targets); runs under autocast when
            mixed precision is on. The epoch loss is the target-weighted mean of these losses.
        config: the loop's settings.
        device: where the module lives (autocast device type, CUDA RNG, loss accumulation).
        validate: returns the validation metric after each epoch; called with the module in
            eval mode under ``torch.no_grad()``.
        higher_is_better: direction of the metric (``False`` for a loss).
        scheduler: a learning-rate scheduler stepped per ``config.scheduler_interval``.
        fingerprint: the caller's digest of parameters + data + seed; a checkpoint written
            under another fingerprint is never loaded.
        n_batches: epoch -> number of mini-batches, for the progress bar (else ``len()`` of the
            epoch's batches when they have one).
        extra_state: named random generators or :class:`Stateful` objects used by ``batches`` /
            ``loss_fn`` (e.g. a negative sampler's generator), checkpointed and restored.
        on_epoch: called with every finished epoch's stats, after its checkpoint is written
            (e.g. a tuning trial's report; an exception it raises, such as a pruned trial,
            ends the run with that epoch's checkpoint in place).

    Returns:
        The history, best epoch and how the run ended.

    Raises:
        ValueError: ``patience`` or ``ReduceLROnPlateau`` without ``validate``; a checkpoint
            with this fingerprint lacks an ``extra_state`` entry.
        FloatingPointError: a non-finite training loss (the last checkpoint stays).
    """
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if config.patience is not None and validate is None:
        raise ValueError("patience (early stopping) needs a validate callable")
    if plateau and (validate is None or config.scheduler_interval != "epoch"):
        raise ValueError("ReduceLROnPlateau needs validate and scheduler_interval='epoch'")
    extra = dict(extra_state or {})
    dtype = amp_dtype(config.amp, device, cpu_bf16=config.cpu_bf16)
    scaler = grad_scaler_for(device, dtype)
    result = TrainResult(amp_dtype=dtype)
    best: _Best | None = None
    bad_epochs = 0

    ckpt_path = None if config.checkpoint_dir is None else config.checkpoint_dir / CHECKPOINT_FILE
    checkpoint = None if ckpt_path is None else read_checkpoint(ckpt_path, fingerprint)
    if checkpoint is not None:
        assert ckpt_path is not None
        best, bad_epochs = _restore(
            checkpoint, module, optimizer, scaler, scheduler, extra, device, config.host_rng
        )
        result.history = history_from_json(checkpoint["history"])
        result.stopped_early = bool(checkpoint["stopped_early"])
        result.resumed_from = int(checkpoint["epoch"])
        if result.stopped_early or result.resumed_from >= config.n_epochs:
            logger.info(
                "%s: checkpoint %s has the finished run (epoch %d%s): nothing left to train",
                config.desc,
                ckpt_path,
                result.resumed_from,
                ", stopped early" if result.stopped_early else "",
            )
        else:
            logger.info(
                "%s: resuming from %s: epoch %d finished, continuing at epoch %d of %d",
                config.desc,
                ckpt_path,
                result.resumed_from,
                result.resumed_from + 1,
                config.n_epochs,
            )
    logger.info(
        "%s: %d epochs, amp %s, checkpoints %s",
        config.desc,
        config.n_epochs,
        dtype or "off",
        ckpt_path or "off",
    )

    step = _OptimStep(
        optimizer,
        loss_fn,
        device=device,
        dtype=dtype,
        scaler=scaler,
        grad_clip=config.grad_clip,
        scheduler=scheduler if config.scheduler_interval == "step" else None,
    )
    epoch = len(result.history)
    while not result.stopped_early and epoch < config.n_epochs:
        epoch += 1
        module.train()
        epoch_batches = batches(epoch)
        total = n_batches(epoch) if n_batches is not None else None
        if total is None and isinstance(epoch_batches, Sized):
            total = len(epoch_batches)
        stats = run_epoch(
            epoch_batches,
            step,
            epoch=epoch,
            device=device,
            total=total,
            progress=config.progress,
            check_every=config.check_every,
            desc=config.desc,
            log=False,
        )
        note = ""
        metric = None
        if validate is not None:
            metric = _validate(module, validate)
            stats = dataclasses.replace(stats, valid_metric=metric)
            if _improves(metric, best, higher_is_better):
                best = _Best(epoch, metric, _cpu_copy(module.state_dict()))
                bad_epochs = 0
                note = " (best)"
            else:
                bad_epochs += 1
                if best is not None:
                    note = f" (best {best.metric:.6f} at epoch {best.epoch})"
        if scheduler is not None and config.scheduler_interval == "epoch":
            if plateau:
                scheduler.step(metric)
            else:
                scheduler.step()
        result.history.append(stats)
        result.stopped_early = (
            config.patience is not None
            and bad_epochs >= config.patience
            and epoch < config.n_epochs
        )
        logger.info("%s %s%s", config.desc, stats.summary(config.metric_name), note)
        if ckpt_path is not None:
            write_checkpoint(
                ckpt_path,
                _checkpoint_dict(
                    module, optimizer, scaler, scheduler, extra, device, config.host_rng,
                    fingerprint, epoch, result, best, bad_epochs,
                ),
            )  # fmt: skip
        if on_epoch is not None:
            on_epoch(stats)
        if result.stopped_early:
            logger.info(
                "%s: no better %s in %d epochs: stopped after epoch %d",
                config.desc,
                config.metric_name,
                bad_epochs,
                epoch,
            )

    if best is not None:
        result.best_epoch, result.best_metric = best.epoch, best.metric
        if config.restore_best and result.history and best.epoch != result.history[-1].epoch:
            module.load_state_dict(best.state)
            result.restored_best = True
            logger.info(
                "%s: restored the weights of epoch %d (%s %.6f)",
                config.desc,
                best.epoch,
                config.metric_name,
                best.metric,
            )
    module.eval()
    if config.cleanup and ckpt_path is not None:
        remove_checkpoint(ckpt_path)
    return result


def _validate(module: nn.Module, validate: Callable[[], float]) -> float:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return float(validate())
    finally:
        module.train(was_training)


def _improves(metric: float, best: _Best | None, higher_is_better: bool) -> bool:
    if math.isnan(metric):
        return False
    if best is None:
        return True
    return metric > best.metric if higher_is_better else metric < best.metric


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


# ------------------------------------------------------------------------------ checkpoints


def _checkpoint_dict(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    scheduler: Any,
    extra: Mapping[str, torch.Generator | Stateful],
    device: torch.device,
    host_rng: bool,
    fingerprint: str,
    epoch: int,
    result: TrainResult,
    best: _Best | None,
    bad_epochs: int,
) -> dict[str, Any]:
    """Everything needed to continue after ``epoch``, as weights_only-loadable objects."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if host_rng:
        name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
        rng["numpy"] = {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
        version, internal, gauss = random.getstate()
        rng["python"] = {"version": version, "internal": list(internal), "gauss": gauss}
    best_dict = None
    if best is not None:
        # the best epoch's weights; None when they are this epoch's (saved once, as "module")
        state = None if best.epoch == epoch else best.state
        best_dict = {"epoch": best.epoch, "metric": best.metric, "state": state}
    return {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "epoch": epoch,
        "stopped_early": result.stopped_early,
        "bad_epochs": bad_epochs,
        "history": json.dumps([s.to_dict() for s in result.history]),
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rng": rng,
        "best": best_dict,
        "extra": {name: _get_state(obj) for name, obj in extra.items()},
    }


def _get_state(obj: torch.Generator | Stateful) -> Any:
    return obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()


def write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync, then ``os.replace`` (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=partial_suffix())
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists, is readable (``weights_only``), has the format
    :data:`CHECKPOINT_FORMAT` and ``fingerprint``; otherwise ``None`` (with a warning)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a write killed half-way
        with contextlib.suppress(OSError):
            stale.unlink()
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        logger.warning("checkpoint %s unreadable (%s): ignored, training from epoch 1", path, err)
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        logger.warning("checkpoint %s has an unknown format: ignored, training from epoch 1", path)
        return None
    if checkpoint.get("fingerprint") != fingerprint:
        logger.warning(
            "checkpoint %s belongs to another run (fingerprint %r, this run %r): ignored, "
            "training from epoch 1 (it will be overwritten)",
            path,
            checkpoint.get("fingerprint"),
            fingerprint,
        )
        return None
    return checkpoint


def _restore(
    checkpoint: dict[str, Any],
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    scheduler: Any,
    extra: Mapping[str, torch.Generator | Stateful],
    device: torch.device,
    host_rng: bool,
) -> tuple[_Best | None, int]:
    """Load ``checkpoint`` into the objects; returns the early-stopping state."""
    missing = sorted(set(extra) - set(checkpoint["extra"]))
    if missing:
        raise ValueError(
            f"the checkpoint has no state for extra_state {missing}: change the fingerprint "
            "when the run's set-up changes"
        )
    module.load_state_dict(checkpoint["module"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and checkpoint["scaler"] is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    if scheduler is not None and checkpoint["scheduler"] is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    for name, obj in extra.items():
        state = checkpoint["extra"][name]
        if isinstance(obj, torch.Generator):
            obj.set_state(state)
        else:
            obj.load_state_dict(state)
    rng = checkpoint["rng"]
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state_all(rng["cuda"])
    if host_rng and "numpy" in rng:
        s = rng["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["name"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
        p = rng["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    best = None
    if checkpoint["best"] is not None:
        b = checkpoint["best"]
        state = b["state"] if b["state"] is not None else checkpoint["module"]
        best = _Best(int(b["epoch"]), float(b["metric"]), state)
    return best, int(checkpoint["bad_epochs"])


def history_from_json(text: str) -> list[EpochStats]:
    """Epoch records written as JSON (``EpochStats.to_dict`` per epoch) back as ``EpochStats``."""
    names = EpochStats.__dataclass_fields__
    return [EpochStats(**{k: v for k, v in s.items() if k in names}) for s in json.loads(text)]


def remove_checkpoint(path: Path) -> None:
    """Delete the checkpoint file, and its folder when that is then empty."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when empty
