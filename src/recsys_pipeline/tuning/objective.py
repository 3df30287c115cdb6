"""The trial of any registered model: train on the training split with fixed + suggested
parameters, score on the validation split after every epoch (for pruning), return the last
score. Next-item models are scored with the session evaluation (every position, full ranking);
user-item models with the user-based full ranking, each user's training items left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
import polars as pl

from recsys_pipeline.evaluation import evaluate, full_ranking
from recsys_pipeline.evaluation.last_item import evaluate_last_item
from recsys_pipeline.models.registry import model_class
from recsys_pipeline.training.trainer import EpochStats
from recsys_pipeline.tuning.space import ParamSpec, suggest
from recsys_pipeline.tuning.study import worker_id

__all__ = ["METRICS", "Metric", "TrialTracker", "model_objective", "trial_params"]

logger = logging.getLogger(__name__)

METRICS = ("mrr", "recall", "ndcg")


@dataclass(frozen=True)
class Metric:
    """The optimised figure: ``<name>@<cutoff>`` of the shared evaluation."""

    name: str = "mrr"
    cutoff: int = 20
    mode: str = "standard"

    def __post_init__(self) -> None:
        if self.name not in METRICS:
            raise ValueError(f"tune.metric must be one of {METRICS}, got {self.name!r}")
        if int(self.cutoff) < 1:
            raise ValueError(f"tune.cutoff must be >= 1, got {self.cutoff}")

    @property
    def key(self) -> str:
        return f"{self.name}@{self.cutoff}"


class TrialTracker(Protocol):
    """Receives what a trial does (e.g. MLflow nested runs); all methods may be no-ops."""

    def start(self, number: int, params: dict[str, Any]) -> None: ...
    def epoch(self, number: int, epoch: int, value: float, stats: EpochStats) -> None: ...
    def end(self, number: int, state: str, value: float | None, seconds: float) -> None: ...


def trial_params(base: dict[str, Any], suggested: dict[str, Any]) -> dict[str, Any]:
    """Model parameters of a trial: ``base`` (fixed) overridden by ``suggested``.

    A single ``layers`` value becomes a one-layer list; when GRU4Rec's ``elu_param`` is tuned,
    the final activation follows it (``final_act: auto``, as the reference's bpr-max spaces
    intend).
    """
    params = dict(base) | dict(suggested)
    if isinstance(params.get("layers"), int):
        params["layers"] = [params["layers"]]
    if "elu_param" in suggested:
        params["final_act"] = "auto"
    return params


def as_epoch_stats(record: EpochStats | dict[str, Any]) -> EpochStats:
    """A model's per-epoch record (``EpochStats``, or a dict with ``epoch``, ``loss`` and
    ``seconds`` as NeuMF's callback gives) as ``EpochStats``."""
    if isinstance(record, EpochStats):
        return record
    return EpochStats(
        epoch=int(record["epoch"]),
        loss=float(record["loss"]),
        seconds=float(record.get("seconds", 0.0)),
        n_batches=int(record.get("n_batches", 0)),
        n_targets=int(record.get("n_targets", record.get("samples", 0))),
    )


def model_objective(
    kind: str,
    train: pl.DataFrame,
    valid: pl.DataFrame,
    base_params: dict[str, Any],
    specs: list[ParamSpec],
    metric: Metric,
    *,
    eval_batch_size: int = 512,
    evaluate_every_epoch: bool = True,
    tracker: TrialTracker | None = None,
    progress: bool = False,
    protocol: str = "sessions",
) -> Callable[[optuna.Trial], float]:
    """The objective of a study of the ``kind`` model (the training data is prepared once for
    all trials with ``prepare_training_data``).

    ``protocol`` of a next-item model's score: ``"sessions"`` (every position of the ``valid``
    sessions after the first) or ``"last_item"`` (user sequences: ``valid`` holds one target
    row per sequence, ranked after the sequence's ``train`` events with the history excluded;
    both frames keyed by ``SessionId``). User-item models are scored by the user-based full
    ranking."""
    if protocol not in ("sessions", "last_item"):
        raise ValueError(f"protocol must be 'sessions' or 'last_item', got {protocol!r}")
    cls = model_class(kind)
    data = cls.prepare_training_data(train)

    def score(model: Any) -> float:
        if cls.task == "user_item":
            result = full_ranking(
                model,
                valid,
                exclude=train,
                cutoffs=(metric.cutoff,),
                mode=metric.mode,
                progress=False,
            )
        elif protocol == "last_item":
            result = evaluate_last_item(
                model,
                train,
                targets=valid,
                cutoffs=(metric.cutoff,),
                mode=metric.mode,
                batch_size=eval_batch_size,
                user_key="SessionId",
            )
        else:
            result = evaluate(
                model,
                valid,
                cutoffs=(metric.cutoff,),
                mode=metric.mode,
                batch_size=eval_batch_size,
                progress=False,
            )
        return float(result[metric.key])

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        trial.set_user_attr("worker", worker_id())
        suggested = suggest(trial, specs)
        params = trial_params(base_params, suggested)
        model_params = cls.params_class.from_dict(params)
        if tracker:
            tracker.start(trial.number, params)
        logger.info("trial %d: %s", trial.number, suggested)
        model = cls(model_params)
        n_epochs = model_params.epochs
        last: dict[int, float] = {}

        def after_epoch(record: EpochStats | dict[str, Any]) -> None:
            stats = as_epoch_stats(record)
            if not evaluate_every_epoch and stats.epoch < n_epochs:
                return
            value = score(model)
            last[stats.epoch] = value
            trial.report(value, stats.epoch)
            logger.info(
                "trial %d epoch %d: loss %.4f, %s %.4f (%.1f s)",
                trial.number,
                stats.epoch,
                stats.loss,
                metric.key,
                value,
                stats.seconds,
            )
            if tracker:
                tracker.epoch(trial.number, stats.epoch, value, stats)
            if stats.epoch < n_epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {stats.epoch}: {value:.4f}")

        try:
            model.fit(data, progress=progress, callback=after_epoch)
        except optuna.TrialPruned:
            if tracker:
                tracker.end(trial.number, "PRUNED", None, time.perf_counter() - started)
            raise
        except FloatingPointError as err:  # a diverged configuration: a failed trial, go on
            logger.warning("trial %d failed: %s", trial.number, err)
            trial.set_user_attr("error", str(err))
            if tracker:
                tracker.end(trial.number, "FAIL", None, time.perf_counter() - started)
            return float("nan")  # Optuna marks the trial FAIL and the study goes on
        value = last[n_epochs] if n_epochs in last else score(model)
        if tracker:
            tracker.end(trial.number, "COMPLETE", value, time.perf_counter() - started)
        return value

    return objective
