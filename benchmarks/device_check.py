"""Device check: every registered model trained and evaluated on CPU and on CUDA (fp32 and AMP).

    .venv/bin/python benchmarks/device_check.py                      # cpu (+ cuda fp32 and AMP)
    .venv/bin/python benchmarks/device_check.py --threads 2 --json benchmarks/out/device.json
    .venv/bin/python benchmarks/device_check.py --models neumf --seeds 1,2,3,4,5 --devices cpu

For every kind of :func:`recsys_pipeline.models.registry.kinds` and every device variant
(``--devices auto``: ``cpu``, plus ``cuda`` in fp32 and with AMP when CUDA is available) the
model is trained from scratch with every seed of ``--seeds`` (the same seeds on every device),
then evaluated with the shared evaluation:

* ``next_item`` models on generated sessions (:func:`recsys_pipeline.synthetic.sessions.
  generate_events`, views only, split by time: sessions that start in the last 20 % of the
  session start times are the test set, training events are those before the cut); metrics
  Recall@20 and MRR@20 of :func:`recsys_pipeline.evaluation.evaluate` (full ranking, every event
  after the first of a test session is a target, nothing excluded, ties ``standard``).
* ``user_item`` models on generated ratings (:func:`recsys_pipeline.synthetic.ratings.
  generate_ratings`, global time split: the last 10 % of the ratings are the test set); metrics
  HR@10 and NDCG@10 of :func:`recsys_pipeline.evaluation.user_ranking.full_ranking` (every test
  rating ranked against all items, the user's training items excluded, ties ``standard``;
  HR@10 is ``recall@10`` there: the share of test ratings in the top 10).

A popularity baseline (``MostPopular`` / ``UserPopularity``) is printed for each task, to show
that the models learned more than popularity in these few steps.

Sizes: :data:`CONFIGS` holds per kind only size settings (layers, batch, epochs) chosen so that
each model does a few hundred optimisation steps (the count is printed: mini-batches, from the
model's ``history``). A kind without an entry gets its class's default parameters plus
``n_epochs = FALLBACK_EPOCHS`` (when it has that field); every kind gets ``device``, ``seed``
and ``amp`` (when it has those fields). A kind that cannot be built or trained on the CPU is
reported as ``skipped: <reason>`` and the others go on. A model without an ``amp`` field gets
no AMP row ("AMP n/a"; GRU4Rec: its own fused fp32 step). NeuMF's ``amp`` defaults to ``auto``
(bf16 on CUDA), so the fp32 rows pass ``amp=off`` explicitly.

Throughput: ``train s`` is the wall time of ``fit`` (data indexing and set-up included, CUDA
synchronised); ``steps/s`` and ``targets/s`` are the model's own epoch-loop counts over the
loop's seconds (``history``: GRU4Rec targets = next-item targets, NeuMF = training samples,
positives plus negatives); ``eval s`` is the evaluation's wall time. Figures are medians over
the seeds (the first CUDA run also pays for CUDA's lazy initialisation; a small matmul warms
the context up first); metrics are means over the seeds, with the relative standard deviation
over the seeds (``±``). ``--json`` also keeps every seed's run and, on CUDA, its peak
allocated memory.

Tolerances and why (``PASS``/``FAIL`` per CUDA row, exit status 1 on any ``FAIL``):

1. **Training, CUDA vs CPU**: the seed means of both main metrics, relative difference
   ``(cuda - cpu) / cpu``, within **3 %** (fp32) and **5 %** (AMP), the same for every kind.
   A CUDA run is *not* the CPU computation with other kernels: the models draw their negatives
   (and NeuMF its dropout masks) from a ``torch.Generator`` on the device, and CUDA's Philox
   stream differs from the CPU's Mersenne Twister under the same seed (the initial weights are
   drawn on the CPU and agree). So the difference is a seed-to-seed difference plus rounding,
   and the tolerance has to cover the seed spread. Measured here on the CPU with the default
   data and sizes and 5 seeds (relative standard deviation ``s`` over the seeds): GRU4Rec
   Recall@20 0.4 %, MRR@20 0.7 %; NeuMF HR@10 0.6 %, NDCG@10 0.8 %. The means of ``n`` seeds on
   two devices differ with a standard deviation of ``s * sqrt(2 / n)``, 0.8 ``s`` for the
   default 3 seeds, i.e. at most ~0.6 %: 3 % is 5 of those, and still 3 if the true ``s`` is
   1.5 times the 5-seed estimate. With a smaller NeuMF set-up (1,000 users, batch 2,048) ``s``
   was 1.6-2.4 %, hence the set-up below. AMP (NeuMF: autocast of the forward pass; the loss,
   weights, optimiser and evaluation stay fp32) adds rounding noise to every step and may shift
   the result slightly, so it gets 5 %. Not yet checked on a GPU: the first CUDA run should
   confirm that the CUDA rows' own seed spread (printed as ``±``) is of the CPU's size; if it
   is far larger, these tolerances do not hold. A device bug (a wrong kernel, a broken
   sampler, AMP overflow) typically moves the metrics by far more than 3-5 %; a subtle one
   below that is not caught. ``--rtol-fp32`` / ``--rtol-amp`` override the tolerances.
2. **Evaluation, CUDA vs CPU on the same weights**: the model of the first seed trained on CUDA
   is saved, loaded on the CPU and evaluated again. Same weights, same test data: scores differ
   only in the last bits (other kernels), which can reorder near-ties only; one reordered
   target moves a metric by ``1 / n_targets`` (~0.02 % here). Tolerance **0.5 %** relative.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from recsys_pipeline.evaluation import evaluate
from recsys_pipeline.evaluation.user_baselines import UserPopularity
from recsys_pipeline.evaluation.user_ranking import full_ranking
from recsys_pipeline.models import registry
from recsys_pipeline.models.baselines import MostPopular
from recsys_pipeline.preprocessing import ncf
from recsys_pipeline.preprocessing.protocol import time_split
from recsys_pipeline.synthetic.ratings import RatingsConfig, generate_ratings
from recsys_pipeline.synthetic.sessions import SyntheticConfig, generate_events

logger = logging.getLogger("device_check")

#: per kind: size settings only (``params``; ``epochs`` sets the model's epoch field)
CONFIGS: dict[str, dict[str, Any]] = {
    # 20.6k training events, 17.1k targets -> 282 mini-batches of 64 per epoch, 564 steps
    "gru4rec": {
        "params": {"layers": [100], "batch_size": 64, "n_sample": 2048},
        "epochs": 2,
    },
    # 90k training ratings x (1 + 4 negatives) = 450k samples -> 110 mini-batches, 330 steps
    "neumf": {
        "params": {"factors": 64, "layers": [256, 256, 128, 64], "batch_size": 4096},
        "epochs": 3,
    },
    # the same sessions as GRU4Rec: 3,494 sequences with >= 2 events -> 55 mini-batches of 64
    # per epoch, 330 steps; full-softmax cross-entropy (the loss that exercises AMP the most)
    "sasrec": {
        "params": {
            "maxlen": 20,
            "hidden_units": 64,
            "batch_size": 64,
            "loss": "ce",
            "dropout_rate": 0.2,
            "lr": 0.002,
        },
        "epochs": 6,
    },
    # the same sessions, masked-item training (each prefix of a test session is its own row
    # with the mask appended in the evaluation): 3.5k rows of 64 -> 55 mini-batches per epoch
    "bert4rec": {
        "params": {
            "maxlen": 20,
            "hidden_units": 64,
            "batch_size": 64,
            "hidden_dropout": 0.2,
            "mask_prob": 0.3,
            "max_predictions": 8,
            "lr": 0.002,
            "warmup_steps": 20,
        },
        "epochs": 6,
    },
    # the same sessions, masked-item training with XLNet (Hugging Face's XLNetModel)
    "xlnet_mlm": {
        "params": {
            "maxlen": 20,
            "d_model": 64,
            "item_dim": 64,
            "n_layer": 2,
            "n_head": 4,
            "batch_size": 64,
            "lr": 0.002,
        },
        "epochs": 6,
    },
    # the same sessions, HSTU (pointwise SiLU attention, sampled softmax, time buckets)
    "hstu": {
        "params": {
            "maxlen": 20,
            "hidden_units": 64,
            "dqk": 32,
            "dv": 32,
            "num_heads": 2,
            "batch_size": 64,
            "n_negatives": 128,
            "lr": 0.002,
        },
        "epochs": 6,
    },
}
FALLBACK_EPOCHS = 3
#: relative tolerance of CUDA vs CPU training (seed means), see the docstring
RTOL = {"fp32": 0.03, "amp": 0.05}
EVAL_RTOL = 0.005
#: the two main metrics per task: (result key, printed name)
METRICS = {
    "next_item": (("recall@20", "Recall@20"), ("mrr@20", "MRR@20")),
    "user_item": (("recall@10", "HR@10"), ("ndcg@10", "NDCG@10")),
}
PROTOCOLS = {
    "next_item": "evaluate(): full ranking, every event after the first of a test session is a "
    "target, nothing excluded, ties standard",
    "user_item": "full_ranking(): each test rating ranked against all items, the user's training "
    "items excluded, ties standard (HR@10 = recall@10 per test rating)",
}


@dataclass(frozen=True)
class Variant:
    """One device setting: ``device`` and ``amp`` (``None``: fp32; ``"bf16"`` / ``"fp16"``)."""

    device: str
    amp: str | None = None

    @property
    def label(self) -> str:
        return f"{self.device} {self.amp or 'fp32'}"


@dataclass
class Run:
    """One training + evaluation of one kind on one variant with one seed."""

    seed: int
    steps: int | None
    targets: int | None
    train_s: float
    loop_s: float | None
    eval_s: float
    metrics: dict[str, float]
    peak_mem_gb: float | None = None


@dataclass
class Row:
    """All seeds of one (kind, variant); ``status`` is ``ok``, ``n/a: ...`` or ``error: ...``."""

    kind: str
    task: str
    device: str
    amp: str  # "off" / "bf16" / "fp16" / "n/a" (no amp parameter)
    status: str = "ok"
    runs: list[Run] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        values = [getattr(r, name) for r in self.runs if getattr(r, name) is not None]
        return statistics.median(values) if values else None

    def rate(self, count: str) -> float | None:
        """Median over the seeds of ``count`` (``steps`` / ``targets``) per loop second."""
        values = [
            getattr(r, count) / r.loop_s
            for r in self.runs
            if getattr(r, count) is not None and r.loop_s
        ]
        return statistics.median(values) if values else None

    def mean(self, metric: str) -> float:
        return statistics.fmean(r.metrics[metric] for r in self.runs)

    def rel_sd(self, metric: str) -> float:
        """Relative standard deviation of ``metric`` over the seeds (0 for one seed)."""
        values = [r.metrics[metric] for r in self.runs]
        if len(values) < 2 or self.mean(metric) == 0:
            return 0.0
        return statistics.stdev(values) / abs(self.mean(metric))


# ------------------------------------------------------------------------------------- data


def session_data(
    n_events: int, n_items: int, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Generated views ``SessionId, ItemId, Time`` split by time: (train, test, summary)."""
    events, _ = generate_events(
        SyntheticConfig(n_events=n_events, n_items=n_items, n_users=n_events // 10, seed=seed)
    )
    views = (
        events.filter(pl.col("event") == "view")
        .select(SessionId="session", ItemId="item", Time="ts_ms")
        .sort("SessionId", "Time", maintain_order=True)
    )
    starts = views.group_by("SessionId").agg(pl.col("Time").min()).sort("Time")
    cut = int(starts["Time"][int(0.8 * starts.height)])
    train, test = time_split(views, cut)
    summary = {
        "views": views.height,
        "items": views["ItemId"].n_unique(),
        "train_events": train.height,
        "train_sessions": train["SessionId"].n_unique(),
        "test_events": test.height,
        "test_sessions": test["SessionId"].n_unique(),
    }
    return train, test, summary


def rating_data(
    n_users: int, n_items: int, n_ratings: int, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Generated ratings ``UserId, ItemId, Time``, global time split: (train, test, summary)."""
    ratings = generate_ratings(
        RatingsConfig(n_users=n_users, n_items=n_items, n_ratings=n_ratings, seed=seed)
    )
    cuts = ncf.time_cuts(ratings, test_fraction=0.1, valid_fraction=0.0)
    train, _, test = ncf.time_split(ratings, cuts["cut_valid"], cuts["cut_test"])
    summary = {
        "ratings": ratings.height,
        "users": train["UserId"].n_unique(),
        "items": train["ItemId"].n_unique(),
        "train_ratings": train.height,
        "test_ratings": test.height,
    }
    return train, test, summary


# ----------------------------------------------------------------------------------- models


def model_params(kind: str, cls: type, variant: Variant, seed: int) -> dict[str, Any]:
    """The parameters of ``kind`` for ``variant`` and ``seed`` (see :data:`CONFIGS`).

    Raises:
        ValueError: a configured name is not a parameter of the class.
    """
    names = set(cls.params_class.field_names())
    config = CONFIGS.get(kind)
    params = dict(config["params"]) if config else {}
    epochs = config.get("epochs") if config else FALLBACK_EPOCHS
    epochs_field = cls.params_class.epochs_field
    if epochs is not None and epochs_field in names:
        params[epochs_field] = epochs
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"CONFIGS[{kind!r}] names unknown parameters {unknown}")
    if "device" in names:
        params["device"] = variant.device
    if "seed" in names:
        params["seed"] = seed
    if "amp" in names:
        params["amp"] = variant.amp or "off"
    return params


def history_totals(model: Any) -> tuple[int, int | None, float | None] | None:
    """``(steps, targets, loop seconds)`` summed over ``model.history`` (``EpochStats`` or
    dicts with ``n_batches``), or ``None`` when the model keeps no such history."""
    history = getattr(model, "history", None)
    if not history:
        return None
    steps, targets, seconds = 0, 0, 0.0
    for entry in history:
        record = entry.to_dict() if hasattr(entry, "to_dict") else entry
        if not isinstance(record, Mapping) or "n_batches" not in record:
            return None
        steps += int(record["n_batches"])
        targets += int(record.get("n_targets", 0))
        seconds += float(record.get("seconds", math.nan))
    return steps, targets or None, seconds if math.isfinite(seconds) else None


def call_fit(model: Any, train: pl.DataFrame) -> None:
    """``model.fit(train)``, without progress bars where the model has that switch."""
    kwargs = {"progress": False} if "progress" in inspect.signature(model.fit).parameters else {}
    model.fit(train, **kwargs)


def evaluate_model(
    model: Any, task: str, train: pl.DataFrame, test: pl.DataFrame
) -> tuple[dict[str, float], float]:
    """The task's metrics of ``model`` on ``test`` and the evaluation's wall seconds."""
    t0 = time.perf_counter()
    if task == "next_item":
        result = evaluate(model, test, cutoffs=(10, 20), mode="standard", progress=False)
    else:
        result = full_ranking(
            model, test, exclude=train, cutoffs=(10, 20), mode="standard", progress=False
        )
    metrics = {k: float(v) for k, v in result.items() if "@" in k}
    metrics["n_targets"] = float(result["n_targets"])
    return metrics, time.perf_counter() - t0


def synchronise(device: str) -> None:
    """Wait for the device's queued work (CUDA), so that wall times are complete."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_and_evaluate(
    kind: str, variant: Variant, seed: int, data: tuple[pl.DataFrame, pl.DataFrame]
) -> tuple[Any, Run]:
    """Train ``kind`` on ``variant`` with ``seed`` and evaluate it."""
    cls = registry.model_class(kind)
    train, test = data
    params = model_params(kind, cls, variant, seed)
    torch.manual_seed(seed)  # for models that also draw from the global generators
    cuda = variant.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = registry.create_model(kind, params)
    synchronise(variant.device)
    t0 = time.perf_counter()
    call_fit(model, train)
    synchronise(variant.device)
    train_s = time.perf_counter() - t0
    metrics, eval_s = evaluate_model(model, cls.task, train, test)
    totals = history_totals(model)
    steps, targets, loop_s = totals if totals else (None, None, None)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    run = Run(seed, steps, targets, train_s, loop_s or train_s, eval_s, metrics, peak)
    return model, run


def cross_device_eval(
    model: Any, task: str, data: tuple[pl.DataFrame, pl.DataFrame], cuda_run: Run
) -> dict[str, Any]:
    """The CUDA-trained ``model`` saved, loaded on the CPU and evaluated there; relative
    difference of every main metric to its CUDA evaluation (``cuda_run``)."""
    with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
        try:
            model.save(Path(tmp) / "model", optimizer=False)
        except TypeError:
            model.save(Path(tmp) / "model")
        cpu_model = registry.load_model(Path(tmp) / "model", device="cpu")
    metrics, _ = evaluate_model(cpu_model, task, *data)
    diffs = {name: rel_diff(metrics[key], cuda_run.metrics[key]) for key, name in METRICS[task]}
    ok = all(abs(d) <= EVAL_RTOL for d in diffs.values())
    return {"seed": cuda_run.seed, "rel_diff": diffs, "rtol": EVAL_RTOL, "pass": ok}


def rel_diff(value: float, reference: float) -> float:
    """``(value - reference) / |reference|`` (0 when both are 0, inf when only the reference)."""
    if reference == 0:
        return 0.0 if value == 0 else math.inf
    return (value - reference) / abs(reference)


def baseline_metrics(
    task: str, data: tuple[pl.DataFrame, pl.DataFrame]
) -> tuple[str, dict[str, float]]:
    """Name and metrics of the task's popularity baseline (on the CPU)."""
    train, test = data
    if task == "next_item":
        return "MostPopular", evaluate_model(MostPopular.fit(train), task, train, test)[0]
    return "UserPopularity", evaluate_model(UserPopularity().fit(train), task, train, test)[0]


# ---------------------------------------------------------------------------------- running


def variants(devices: str, amp: str) -> list[Variant]:
    """``--devices`` / ``--amp`` as variants (CUDA: fp32 and AMP).

    Raises:
        SystemExit: CUDA asked for but not available, or an unknown device.
    """
    names = ["cpu", "cuda"] if devices == "auto" else [d.strip() for d in devices.split(",")]
    out = []
    for name in names:
        if name == "cpu":
            out.append(Variant("cpu"))
        elif name.startswith("cuda"):
            if not torch.cuda.is_available():
                if devices == "auto":
                    continue
                raise SystemExit(f"--devices {devices}: CUDA is not available here")
            dtype = amp
            if dtype == "auto":
                dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            out += [Variant(name), Variant(name, dtype)]
        else:
            raise SystemExit(f"unknown device {name!r} in --devices (cpu, cuda, cuda:N, auto)")
    return out


def run_kind(
    kind: str,
    variant_list: list[Variant],
    seeds: list[int],
    data: tuple[pl.DataFrame, pl.DataFrame],
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Every variant and seed of ``kind``; returns its rows and its cross-device eval checks."""
    cls = registry.model_class(kind)
    has_amp = "amp" in cls.params_class.field_names()
    rows, checks = [], []
    for variant in variant_list:
        amp = (variant.amp or "off") if has_amp else "n/a"
        row = Row(kind, cls.task, variant.device, amp)
        rows.append(row)
        if variant.amp and not has_amp:
            row.status = "n/a: AMP n/a (no amp parameter)"
            continue
        first_model = None
        for seed in seeds:
            logger.info("%s on %s, seed %d", kind, variant.label, seed)
            try:
                model, run = train_and_evaluate(kind, variant, seed, data)
            except Exception as err:  # noqa: BLE001 - reported, the other runs go on
                logger.exception("%s on %s, seed %d failed", kind, variant.label, seed)
                row.status = f"error: {type(err).__name__}: {err}"
                break
            row.runs.append(run)
            if first_model is None:
                first_model = model
        if variant.device.startswith("cuda") and row.status == "ok" and first_model is not None:
            try:
                check = cross_device_eval(first_model, cls.task, data, row.runs[0])
            except Exception as err:  # noqa: BLE001
                check = {"error": f"{type(err).__name__}: {err}", "pass": False}
            checks.append({"kind": kind, "variant": variant.label, **check})
        if variant.device == "cpu" and row.status != "ok":
            row.status = f"skipped: {row.status}"
            break  # no CPU reference: the kind is skipped
    return rows, checks


def compare(rows: list[Row], rtol_fp32: float | None, rtol_amp: float | None) -> list[dict]:
    """Every CUDA row against the CPU row of its kind (seed means of the main metrics)."""
    out = []
    cpu = {r.kind: r for r in rows if r.device == "cpu" and r.status == "ok"}
    for row in rows:
        if not row.device.startswith("cuda") or row.status.startswith("n/a"):
            continue
        ref = cpu.get(row.kind)
        if ref is None:
            continue
        precision = "fp32" if row.amp in ("off", "n/a") else "amp"
        override = {"fp32": rtol_fp32, "amp": rtol_amp}[precision]
        rtol = RTOL[precision] if override is None else override
        record: dict[str, Any] = {"kind": row.kind, "device": row.device, "amp": row.amp}
        if row.status != "ok":
            record.update(error=row.status, rtol=rtol, rel_diff={}, **{"pass": False})
        else:
            diffs = {
                name: rel_diff(row.mean(key), ref.mean(key)) for key, name in METRICS[row.task]
            }
            ok = all(abs(d) <= rtol for d in diffs.values())
            record.update(rtol=rtol, rel_diff=diffs, **{"pass": ok})
        out.append(record)
    return out


# --------------------------------------------------------------------------------- printing


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, ``-`` when missing."""
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    """One line per (kind, device, amp): throughput medians and metric means over the seeds."""
    header = (
        f"{'model':<10} {'device':<7} {'amp':<5} {'steps':>6} {'train s':>8} {'steps/s':>8} "
        f"{'targets/s':>10} {'eval s':>7}  {'metric 1':<24} {'metric 2':<24}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        lead = f"{row.kind:<10} {row.device:<7} {row.amp:<5}"
        if row.status != "ok":
            print(f"{lead} {row.status}")
            continue
        metrics = [
            f"{name} {row.mean(key):.4f} ±{100 * row.rel_sd(key):.1f}%"
            for key, name in METRICS[row.task]
        ]
        steps = row.median("steps")
        print(
            f"{lead} {_fmt(steps, '6.0f')} {_fmt(row.median('train_s'), '8.2f')} "
            f"{_fmt(row.rate('steps'), '8.1f')} {_fmt(row.rate('targets'), '10,.0f')} "
            f"{_fmt(row.median('eval_s'), '7.2f')}  {metrics[0]:<24} {metrics[1]:<24}"
        )
    print(
        "amp n/a: the model has no amp parameter (fp32 only); steps = mini-batches; "
        "medians and seed means over the seeds, ± = relative sd over the seeds"
    )


def environment(threads: int) -> dict[str, Any]:
    """Versions, thread count, GPU name and its precision switches (bf16, TF32)."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_threads": threads,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        env["matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
        env["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    return env


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status (1 when a CUDA comparison fails)."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", default="auto", help="auto (cpu + cuda when present) or a list")
    ap.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16"), help="AMP rows")
    ap.add_argument("--models", default="", help="comma-separated kinds (default: all)")
    ap.add_argument("--seeds", default="1,2,3", help="training seeds, the same on every device")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--events", type=int, default=30_000, help="generated session events")
    ap.add_argument("--items", type=int, default=1_000, help="items of the sessions")
    ap.add_argument("--users", type=int, default=2_000, help="users of the ratings")
    ap.add_argument("--rating-items", type=int, default=500, help="items of the ratings")
    ap.add_argument("--ratings", type=int, default=100_000, help="generated ratings")
    ap.add_argument("--data-seed", type=int, default=7)
    ap.add_argument("--rtol-fp32", type=float, default=None, help="override every kind's")
    ap.add_argument("--rtol-amp", type=float, default=None, help="override every kind's")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--verbose", action="store_true", help="the models' INFO logs")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variant_list = variants(args.devices, args.amp)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()] or registry.kinds()
    env = environment(torch.get_num_threads())
    print("device check: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"variants: {', '.join(v.label for v in variant_list)}; seeds {seeds}")
    if not any(v.device.startswith("cuda") for v in variant_list):
        print("no CUDA device in this run: CPU part only, no CUDA comparison")
    else:  # pay CUDA's context and cuBLAS set-up before the first timed run
        warm = torch.randn(256, 256, device="cuda")
        (warm @ warm).sum().item()

    t0 = time.perf_counter()
    s_train, s_test, s_summary = session_data(args.events, args.items, args.data_seed)
    r_train, r_test, r_summary = rating_data(
        args.users, args.rating_items, args.ratings, args.data_seed
    )
    datasets = {"next_item": (s_train, s_test), "user_item": (r_train, r_test)}
    summaries = {"next_item": s_summary, "user_item": r_summary}
    print(f"data ({time.perf_counter() - t0:.1f} s): sessions {s_summary}; ratings {r_summary}")

    rows: list[Row] = []
    checks: list[dict[str, Any]] = []
    tasks_used: set[str] = set()
    for kind in kinds:
        try:
            task = registry.model_class(kind).task
            model_params(kind, registry.model_class(kind), Variant("cpu"), seeds[0])
        except Exception as err:  # noqa: BLE001 - a kind that cannot be built is skipped
            rows.append(Row(kind, "?", "-", "-", status=f"skipped: {type(err).__name__}: {err}"))
            continue
        if task not in datasets:
            rows.append(Row(kind, task, "-", "-", status=f"skipped: no data for task {task!r}"))
            continue
        tasks_used.add(task)
        kind_rows, kind_checks = run_kind(kind, variant_list, seeds, datasets[task])
        rows += kind_rows
        checks += kind_checks

    print()
    for task in sorted(tasks_used):
        name, base = baseline_metrics(task, datasets[task])
        shown = ", ".join(f"{label} {base[key]:.4f}" for key, label in METRICS[task])
        print(f"{task}: {PROTOCOLS[task]}; {int(base['n_targets'])} targets")
        print(f"  baseline {name} (CPU): {shown}")
    print()
    print_table(rows)
    comparisons = compare(rows, args.rtol_fp32, args.rtol_amp)
    if comparisons:
        print("\ntraining on CUDA vs CPU (seed means; relative difference, tolerance):")
    for c in comparisons:
        verdict = "PASS" if c["pass"] else "FAIL"
        diffs = ", ".join(f"{k} {100 * v:+.2f}%" for k, v in c["rel_diff"].items())
        print(
            f"  {c['kind']:<10} {c['device']} amp {c['amp']:<4}: "
            f"{diffs or c.get('error')} (tol {100 * c['rtol']:.0f}%) {verdict}"
        )
    if checks:
        print("\nevaluation on CPU of the CUDA-trained weights (first seed) vs on CUDA:")
    for c in checks:
        verdict = "PASS" if c["pass"] else "FAIL"
        diffs = ", ".join(f"{k} {100 * v:+.3f}%" for k, v in c.get("rel_diff", {}).items())
        print(
            f"  {c['kind']:<10} {c['variant']}: {diffs or c.get('error')} "
            f"(tol {100 * EVAL_RTOL:.1f}%) {verdict}"
        )
    failed = [c for c in comparisons + checks if not c["pass"]]
    if comparisons or checks:
        print(
            f"\n{'FAIL' if failed else 'PASS'}: {len(failed)} of {len(comparisons) + len(checks)}"
        )
    if args.json:
        record = {
            "environment": env,
            "seeds": seeds,
            "data": summaries,
            "protocols": PROTOCOLS,
            "configs": CONFIGS,
            "rows": [
                {
                    **{k: v for k, v in asdict(r).items() if k != "runs"},
                    "runs": [asdict(x) for x in r.runs],
                }
                for r in rows
            ],
            "comparisons": comparisons,
            "eval_checks": checks,
            "passed": not failed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
