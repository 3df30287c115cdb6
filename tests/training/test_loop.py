"""Tests of the shared epoch loop (``training/loop.py``): AMP policy, clipping, scheduler,
validation with early stopping and best-epoch restore, checkpoints and a bit-exact resume after
SIGKILL."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys_pipeline.training import loop
from recsys_pipeline.training.loop import (
    CHECKPOINT_FILE,
    LoopConfig,
    amp_dtype,
    cpu_supports_bf16,
    grad_scaler_for,
    train_epochs,
)
from recsys_pipeline.training.trainer import EpochStats
from tests.training._loop_kill_script import BATCH, N_TRAIN, make_setup, train

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CPU = torch.device("cpu")
SCRIPT = Path(__file__).with_name("_loop_kill_script.py")


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


# ------------------------------------------------------------------------------ AMP policy


def test_amp_dtype_rules(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cuda = torch.device("cuda", 0)  # only the dtype rule is exercised: no GPU needed
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype("auto", cuda) == torch.bfloat16
    assert amp_dtype("fp16", cuda) == torch.float16
    assert amp_dtype("off", cuda) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("auto", cuda) == torch.float16
    assert amp_dtype("bf16", cuda) == torch.bfloat16
    assert amp_dtype("auto", CPU) is None
    with caplog.at_level(logging.WARNING, logger=loop.__name__):
        assert amp_dtype("bf16", CPU) is None
    assert "CUDA only" in caplog.text
    expected = torch.bfloat16 if cpu_supports_bf16() else None
    assert amp_dtype("auto", CPU, cpu_bf16=True) == expected
    assert amp_dtype("off", CPU, cpu_bf16=True) is None
    with pytest.raises(ValueError, match="amp must be one of"):
        amp_dtype("half", CPU)
    assert isinstance(grad_scaler_for(CPU, torch.float16), torch.amp.GradScaler)
    assert grad_scaler_for(CPU, torch.bfloat16) is None


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="patience"):
        LoopConfig(n_epochs=2, patience=0)
    with pytest.raises(ValueError, match="scheduler_interval"):
        LoopConfig(n_epochs=2, scheduler_interval="batch")
    assert LoopConfig(n_epochs=1, checkpoint_dir="x").checkpoint_dir == Path("x")  # type: ignore[arg-type]
    s = make_setup()
    with pytest.raises(ValueError, match="needs a validate"):
        train_epochs(
            s.model, s.optimizer, s.batches, s.loss_fn,
            config=LoopConfig(n_epochs=1, patience=2), device=CPU,
        )  # fmt: skip


# ------------------------------------------------------------------------------- training


def test_loss_decreases_amp_off_on_cpu_by_default() -> None:
    s = make_setup()
    autocast_seen = []

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return s.loss_fn(batch)

    result = train_epochs(
        s.model, s.optimizer, s.batches, loss_fn,
        config=LoopConfig(n_epochs=4, progress=False), device=CPU, scheduler=s.scheduler,
    )  # fmt: skip
    losses = [h.loss for h in result.history]
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]
    assert losses[-1] < 0.6 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert result.amp_dtype is None and not any(autocast_seen)
    assert (
        result.history[0].n_targets == N_TRAIN and result.history[0].n_batches == N_TRAIN // BATCH
    )
    assert s.scheduler.last_epoch == 4 * (N_TRAIN // BATCH)  # stepped once per optimizer step
    assert result.best_epoch is None and not result.stopped_early and result.resumed_from is None
    assert not s.model.training


def test_cpu_bf16_autocast() -> None:
    s = make_setup()
    dtypes = []

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        dtypes.append(s.model(batch[0]).dtype)
        return s.loss_fn(batch)

    result = train_epochs(
        s.model, s.optimizer, s.batches, loss_fn,
        config=LoopConfig(n_epochs=1, cpu_bf16=True, progress=False), device=CPU,
    )  # fmt: skip
    expected = torch.bfloat16 if cpu_supports_bf16() else None
    assert result.amp_dtype == expected
    assert set(dtypes) == {expected or torch.float32}
    assert all(p.dtype == torch.float32 for p in s.model.parameters())  # master weights fp32


def test_grad_clip_bounds_every_update() -> None:
    """SGD with lr 1: each update is the clipped gradient, whose norm is exactly ``clip``."""
    s = make_setup()
    clip = 1e-3
    optimizer = torch.optim.SGD(s.model.parameters(), lr=1.0)
    snapshots = []

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        snapshots.append(torch.cat([p.detach().flatten() for p in s.model.parameters()]))
        return s.loss_fn(batch)

    train_epochs(
        s.model, optimizer, s.batches, loss_fn,
        config=LoopConfig(n_epochs=1, grad_clip=clip, progress=False), device=CPU,
    )  # fmt: skip
    steps = [float((b - a).norm()) for a, b in zip(snapshots, snapshots[1:], strict=False)]
    assert len(steps) == N_TRAIN // BATCH - 1
    assert steps == pytest.approx([clip] * len(steps), rel=1e-3)


def test_fp16_step_unscales_before_clipping() -> None:
    """The GradScaler path (CUDA's fp16), run on the CPU: the clip sees unscaled gradients."""
    torch.manual_seed(0)
    net = nn.Linear(8, 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = torch.randn(16, 8), torch.randint(3, (16,))
    step = loop._OptimStep(
        optimizer, lambda b: (F.cross_entropy(net(b[0]), b[1]), len(b[0])),
        device=CPU, dtype=torch.float16, scaler=scaler, grad_clip=1e-3,
    )  # fmt: skip
    before = torch.cat([p.detach().flatten() for p in net.parameters()])
    loss, n = step((x, y))
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert n == 16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-3)
    assert scaler.get_scale() == 2.0**12  # finite gradients: scale kept, step taken


# ------------------------------------------------------------- validation, early stopping


@pytest.mark.parametrize(
    ("metrics", "higher", "restore", "best_epoch", "final_epoch"),
    [
        ([0.1, 0.5, 0.4, 0.45, 0.9, 1.0], True, True, 2, 2),
        ([0.1, 0.5, 0.4, 0.45, 0.9, 1.0], True, False, 2, 4),
        ([0.9, 0.5, 0.6, 0.5, 0.1, 0.0], False, True, 2, 2),  # a loss: equal is no better
    ],
)
def test_early_stopping_and_best_restore(
    tmp_path: Path,
    metrics: list[float],
    higher: bool,
    restore: bool,
    best_epoch: int,
    final_epoch: int,
) -> None:
    s = make_setup()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def validate() -> float:
        assert not s.model.training and not torch.is_grad_enabled()
        snapshots[len(snapshots) + 1] = _state(s.model)
        return metrics[len(snapshots) - 1]

    config = LoopConfig(
        n_epochs=6, patience=2, restore_best=restore, checkpoint_dir=tmp_path, progress=False
    )
    result = train_epochs(
        s.model, s.optimizer, s.batches, s.loss_fn, config=config, device=CPU,
        validate=validate, higher_is_better=higher,
    )  # fmt: skip
    assert result.stopped_early and len(result.history) == 4  # epochs 3 and 4 not better
    assert result.best_epoch == best_epoch and result.best_metric == metrics[best_epoch - 1]
    assert [h.valid_metric for h in result.history] == metrics[:4]
    assert result.restored_best == restore
    _assert_same_state(_state(s.model), snapshots[final_epoch])
    assert not torch.equal(snapshots[2]["out.weight"], snapshots[4]["out.weight"])

    # the finished, early-stopped run in the checkpoint: a rerun trains nothing, same weights
    again = make_setup()
    calls = []
    result2 = train_epochs(
        again.model, again.optimizer, again.batches, lambda b: calls.append(b) or again.loss_fn(b),
        config=config, device=CPU, validate=validate, higher_is_better=higher,
    )  # fmt: skip
    assert calls == [] and result2.resumed_from == 4 and result2.stopped_early
    assert [h.to_dict() for h in result2.history] == [h.to_dict() for h in result.history]
    _assert_same_state(_state(again.model), snapshots[final_epoch])


def test_epoch_scheduler_and_plateau() -> None:
    s = make_setup()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(s.optimizer, factor=0.5, patience=0)
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        train_epochs(
            s.model, s.optimizer, s.batches, s.loss_fn,
            config=LoopConfig(n_epochs=1), device=CPU, scheduler=plateau,
        )  # fmt: skip
    metrics = iter([1.0, 2.0, 2.0])  # lower is better: epoch 2 and 3 are worse -> two halvings
    train_epochs(
        s.model, s.optimizer, s.batches, s.loss_fn,
        config=LoopConfig(n_epochs=3, scheduler_interval="epoch", progress=False), device=CPU,
        validate=lambda: next(metrics), higher_is_better=False, scheduler=plateau,
    )  # fmt: skip
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(0.03 / 4)


def test_epoch_stats_to_dict_backward_compatible() -> None:
    stats = EpochStats(epoch=1, loss=0.5, seconds=2.0, n_batches=4, n_targets=10)
    assert set(stats.to_dict()) == {
        "epoch", "loss", "seconds", "n_batches", "n_targets", "batches_per_s", "targets_per_s",
    }  # fmt: skip
    with_metric = EpochStats(1, 0.5, 2.0, 4, 10, valid_metric=0.25)
    assert with_metric.to_dict()["valid_metric"] == 0.25
    assert "ndcg: 0.250000" in with_metric.summary("ndcg")
    assert "ndcg" not in stats.summary("ndcg")


# ------------------------------------------------------------------ checkpoints and resume


def test_checkpoint_loads_weights_only_and_cleanup(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    setup, result = train(ckpt_dir, 2)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [CHECKPOINT_FILE]  # no temp files
    ckpt = torch.load(ckpt_dir / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["fingerprint"] == "tiny-v1"
    history = json.loads(ckpt["history"])
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["valid_metric"] for h in history] == [h.valid_metric for h in result.history]
    assert set(ckpt["extra"]) == {"negatives"} and set(ckpt["rng"]) == {"torch"}
    assert ckpt["scheduler"]["last_epoch"] == 2 * (N_TRAIN // BATCH)
    # the module's weights are epoch 2's; the best epoch's are stored apart unless they are those
    assert ckpt["best"]["epoch"] == result.best_epoch
    assert (ckpt["best"]["state"] is None) == (result.best_epoch == 2)
    best_state = ckpt["module"] if ckpt["best"]["state"] is None else ckpt["best"]["state"]
    _assert_same_state(best_state, _state(setup.model))  # restore_best: the model ends there

    s = make_setup()
    train_epochs(
        s.model, s.optimizer, s.batches, s.loss_fn, device=CPU,
        config=LoopConfig(n_epochs=1, checkpoint_dir=tmp_path / "gone", cleanup=True, progress=False),
    )  # fmt: skip
    assert not (tmp_path / "gone").exists()


def test_fingerprint_mismatch_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train(tmp_path, 2, fingerprint="params-A")
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        setup, result = train(tmp_path, 2, fingerprint="params-B")
    assert "belongs to another run" in caplog.text and "resuming" not in caplog.text
    assert result.resumed_from is None and [h.epoch for h in result.history] == [1, 2]
    fresh, _ = train(None, 2)
    _assert_same_state(_state(setup.model), _state(fresh.model))
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["fingerprint"] == "params-B"


def test_resume_in_process_is_bit_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """2 epochs, then a new set-up (fresh model, RNG and sampler) resumes to 4: same weights."""
    reference, ref_result = train(None, 4)
    train(tmp_path / "a", 2)
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        resumed, result = train(tmp_path / "a", 4)
    assert "continuing at epoch 3 of 4" in caplog.text
    assert result.resumed_from == 2
    assert [h.loss for h in result.history] == [h.loss for h in ref_result.history]
    _assert_same_state(_state(resumed.model), _state(reference.model))
    assert resumed.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]

    # control: without restoring the torch RNG (dropout masks) the weights differ
    train(tmp_path / "b", 2)
    monkeypatch.setattr(loop.torch, "set_rng_state", lambda state: None)
    broken, _ = train(tmp_path / "b", 4)
    assert not torch.equal(broken.model.emb.weight, reference.model.emb.weight)


def test_sigkill_during_epoch_3_then_rerun_matches_uninterrupted(tmp_path: Path) -> None:
    ckpt_dir, out, marker = tmp_path / "ckpt", tmp_path / "final.pt", tmp_path / "in_epoch_3"
    cmd = [sys.executable, str(SCRIPT), str(ckpt_dir), str(out), "--marker", str(marker)]
    with (tmp_path / "first.log").open("w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), (tmp_path / "first.log").read_text()
        ckpt = torch.load(ckpt_dir / CHECKPOINT_FILE, weights_only=True)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    assert ckpt["epoch"] == 2 and not out.exists()  # killed inside epoch 3, before the end

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in rerun.stderr and "continuing at epoch 3 of 4" in rerun.stderr
    assert "train epoch 1 " not in rerun.stderr and "train epoch 4 " in rerun.stderr

    uninterrupted, _ = train(None, 4)  # same seed, in this process
    _assert_same_state(torch.load(out, weights_only=True), _state(uninterrupted.model))


def test_host_rng_checkpointed_with_weights_only(tmp_path: Path) -> None:
    """``host_rng=True``: numpy's and Python's global RNG states survive the checkpoint."""
    config = LoopConfig(n_epochs=1, checkpoint_dir=tmp_path, host_rng=True, progress=False)
    s = make_setup()
    train_epochs(s.model, s.optimizer, s.batches, s.loss_fn, config=config, device=CPU)
    expected = (np.random.random(3).tolist(), random.random())
    np.random.seed(99)
    random.seed(99)
    again = make_setup()
    result = train_epochs(
        again.model, again.optimizer, again.batches, again.loss_fn, config=config, device=CPU
    )
    assert result.resumed_from == 1  # nothing left to train, states restored
    assert (np.random.random(3).tolist(), random.random()) == expected
    assert set(torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["rng"]) == {
        "torch", "numpy", "python",
    }  # fmt: skip
