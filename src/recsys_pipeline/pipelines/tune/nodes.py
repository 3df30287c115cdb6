"""Nodes of the tuning pipeline: search (Optuna) -> report (plotly) -> final retrain on train_full.

On a user-sequence dataset (``preprocess_sequences``: ``tune.splits`` = ``loo_train``,
``loo_valid``, ``loo_train``, ``loo_test``) trials are scored with the last-item protocol (each
user's validation item after its training items, history excluded) and the final model is
evaluated like the training template's sequence evaluation (test item after training and
validation items, every protocol of ``params:sequence_evaluation``)."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import optuna
import plotly.graph_objects as go
import polars as pl
import torch

from recsys_pipeline.models.registry import kinds, model_class, resolve_params
from recsys_pipeline.pipelines.preprocess_sequences.pipeline import DATASETS as SEQUENCE_DATASETS
from recsys_pipeline.pipelines.train import nodes as train
from recsys_pipeline.pipelines.train import sequence_nodes
from recsys_pipeline.pipelines.train_neumf import nodes as user_item
from recsys_pipeline.reports.labels import PROTOCOL_WORDS
from recsys_pipeline.training.trainer import EpochStats
from recsys_pipeline.tuning import (
    Metric,
    StudySettings,
    TuningError,
    enqueue_defaults,
    load_space,
    model_objective,
    open_study,
    optimize,
    trial_params,
    trials_table,
)
from recsys_pipeline.tuning.study import space_signature

logger = logging.getLogger(__name__)


def _sequences(tune: dict[str, Any]) -> bool:
    """Whether ``tune.dataset`` is a user-sequence dataset (leave-one-out, last-item protocol)."""
    return tune["dataset"] in SEQUENCE_DATASETS


def _as_sessions(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.rename({"UserId": "SessionId"}) if "UserId" in frame.columns else frame


_SETTINGS = {
    "dataset",
    "model",
    "fixed",
    "space",
    "n_trials",
    "timeout_s",
    "metric",
    "cutoff",
    "direction",
    "evaluate_every_epoch",
    "pruner",
    "pruner_args",
    "n_startup_trials",
    "sampler_seed",
    "study_name",
    "heartbeat_interval",
    "grace_period",
    "num_threads",
    "enqueue_defaults",
    "splits",
}


def _base_params(tune: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """The fixed parameters: the ``tune.model`` block resolved for ``tune.dataset``
    (``defaults`` overridden by the dataset's entry), overridden by ``tune.fixed`` (checked)."""
    unknown = sorted(set(tune) - _SETTINGS)
    if unknown:
        raise TuningError(f"unknown tune setting(s) {unknown}; valid: {sorted(_SETTINGS)}")
    kind, dataset = tune["model"], tune["dataset"]
    if kind not in kinds():
        raise TuningError(f"tune.model must be one of {kinds()}, got {kind!r}")
    block = parameters.get(kind) or {}
    if "defaults" not in block and dataset not in block:
        raise TuningError(
            f"no parameters {kind}.defaults or {kind}.{dataset} (tune.dataset); "
            f"known: {sorted(block)}"
        )
    base = resolve_params(block, dataset) | dict(tune.get("fixed") or {})
    base.pop("num_threads", None)
    if base.pop("pretrain", False):  # a recipe of train_neumf, not a model parameter
        logger.warning("%s.pretrain is not used by tune: trials train the model directly", kind)
    try:
        model_class(kind).params_class.from_dict(base)
    except ValueError as err:
        raise TuningError(f"tune.fixed / {kind}.{dataset}: {err}") from err
    return base


def _study_name(tune: dict[str, Any], base: dict[str, Any]) -> str:
    if tune.get("study_name"):
        return str(tune["study_name"])
    tag = model_class(tune["model"]).params_class.from_dict(base).study_tag()
    return "-".join(filter(None, (tune["model"], tune["dataset"], tag)))


class _MlflowTrials:
    """One nested MLflow run per trial under the pipeline's run (params, metric per epoch,
    final value, duration, state)."""

    def __init__(self, study_name: str, metric: Metric) -> None:
        self.study_name = study_name
        self.metric = metric
        self.enabled = mlflow.active_run() is not None

    def start(self, number: int, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        mlflow.start_run(run_name=f"{self.study_name} trial {number}", nested=True)
        mlflow.set_tags({"optuna.study": self.study_name, "optuna.trial": number})
        mlflow.log_params({k: str(v) for k, v in params.items()})

    def epoch(self, number: int, epoch: int, value: float, stats: EpochStats) -> None:
        if self.enabled:
            name = f"valid_{self.metric.name}_at_{self.metric.cutoff}"
            mlflow.log_metrics(
                {name: value, "loss": stats.loss, "targets_per_s": stats.targets_per_s}, step=epoch
            )

    def end(self, number: int, state: str, value: float | None, seconds: float) -> None:
        if not self.enabled:
            return
        metrics = {"duration_s": seconds}
        if value is not None:
            metrics[f"final_{self.metric.name}_at_{self.metric.cutoff}"] = value
        mlflow.log_metrics(metrics)
        mlflow.set_tag("optuna.state", state)
        mlflow.end_run(status="FINISHED" if state != "FAIL" else "FAILED")


def run_study(
    train_tr: pl.DataFrame,
    train_valid: pl.DataFrame,
    storage: str,
    tune: dict[str, Any],
    parameters: dict[str, Any],
    evaluation: dict[str, Any],
) -> tuple[optuna.Study, dict[str, Any], pl.DataFrame, dict[str, dict]]:
    """Run (or continue) the study until it holds ``tune.n_trials`` finished trials.

    Every setting, the space file and the storage are checked before any training. Returns
    the study, the best parameters (JSON), one row per trial and the summary for MLflow.
    """
    base = _base_params(tune, parameters)
    specs = load_space(tune["space"], model_class(tune["model"]).params_class.field_names())
    metric = Metric(tune["metric"], int(tune["cutoff"]), evaluation.get("mode", "standard"))
    settings = StudySettings(
        storage=storage,
        study_name=_study_name(tune, base),
        direction=tune["direction"],
        pruner=tune["pruner"],
        pruner_args=dict(tune.get("pruner_args") or {}) if tune["pruner"] != "none" else {},
        sampler_seed=tune.get("sampler_seed"),
        n_startup_trials=int(tune["n_startup_trials"]),
        heartbeat_interval=int(tune["heartbeat_interval"]),
        grace_period=int(tune["grace_period"]),
    )
    signature = {
        "model": tune["model"],
        "dataset": tune["dataset"],
        "fixed": base,
        "space": space_signature(specs),
        "metric": metric.key,
        "mode": metric.mode,
    }
    study = open_study(settings, signature)
    if tune.get("enqueue_defaults", True):
        enqueue_defaults(study, specs, base)
    if tune.get("num_threads"):
        torch.set_num_threads(int(tune["num_threads"]))
    sequences = _sequences(tune) and model_class(tune["model"]).task == "next_item"
    if sequences:
        train_tr, train_valid = _as_sessions(train_tr), _as_sessions(train_valid)
    objective = model_objective(
        tune["model"],
        train_tr,
        train_valid,
        base,
        specs,
        metric,
        eval_batch_size=int(evaluation.get("batch_size", 512)),
        evaluate_every_epoch=bool(tune["evaluate_every_epoch"]),
        tracker=_MlflowTrials(settings.study_name, metric),
        protocol="last_item" if sequences else "sessions",
    )
    ran = optimize(study, objective, int(tune["n_trials"]), timeout=tune.get("timeout_s"))
    table = pl.DataFrame(
        trials_table(study),
        schema={
            "number": pl.Int64,
            "state": pl.String,
            "value": pl.Float64,
            "duration_s": pl.Float64,
            "epochs_reported": pl.Int64,
            "params": pl.String,
            "worker": pl.String,
            "retry_of": pl.Int64,
        },
    )
    complete = table.filter(pl.col("state") == "COMPLETE")
    if complete.is_empty():
        raise TuningError(f"study {settings.study_name!r} has no complete trial")
    best = study.best_trial
    counts = dict(table.group_by("state").len().iter_rows())
    best_params = {
        "study_name": settings.study_name,
        "dataset": tune["dataset"],
        "metric": metric.key,
        "mode": metric.mode,
        "value": best.value,
        "trial": best.number,
        "params": best.params,
        "model": tune["model"],
        "model_params": trial_params(base, best.params),
        "trials": counts,
        "trials_run_here": ran,
    }
    logger.info(
        "best %s = %.4f (trial %d): %s; trials %s",
        metric.key,
        best.value,
        best.number,
        best.params,
        counts,
    )
    summary_seconds = float(table["duration_s"].drop_nulls().sum())
    tracked = {
        f"best_valid_{metric.name}_at_{metric.cutoff}": {"value": float(best.value), "step": 0},
        "trials_complete": {"value": float(counts.get("COMPLETE", 0)), "step": 0},
        "trials_pruned": {"value": float(counts.get("PRUNED", 0)), "step": 0},
        "trials_seconds": {"value": summary_seconds, "step": 0},
    }
    return study, best_params, table, tracked


def _placeholder(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title)
    return fig


def plot_study(study: optuna.Study) -> tuple[go.Figure, go.Figure, go.Figure, go.Figure]:
    """Optimisation history, parameter importances, slice and parallel-coordinate plots."""
    from optuna import visualization as vis

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    history = vis.plot_optimization_history(study)
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        try:
            importances = vis.plot_param_importances(study)
        except (RuntimeError, ValueError) as err:
            importances = _placeholder("Hyperparameter importances", f"not available: {err}")
    else:
        importances = _placeholder(
            "Hyperparameter importances", "needs at least two complete trials"
        )
    return history, importances, vis.plot_slice(study), vis.plot_parallel_coordinate(study)


def final_params(best: dict[str, Any], tune: dict[str, Any]) -> dict[str, Any]:
    """Model parameters of the final retrain: the best trial's (``num_threads`` kept)."""
    params = dict(best["model_params"])
    if tune.get("num_threads"):
        params["num_threads"] = tune["num_threads"]
    return params


def train_final(
    train_full: pl.DataFrame,
    train_valid: pl.DataFrame,
    params: dict[str, Any],
    tune: dict[str, Any],
) -> tuple[Any, list[dict], dict[str, list[dict]]]:
    """The final retrain of ``tune.model`` on ``train_full`` with the best parameters (the
    training template's node, the parameters given as a block's ``defaults``). On user
    sequences the item table is the training items (a dataset's ``catalog`` is not used here,
    as in the trials)."""
    block, kind, dataset = {"defaults": params}, tune["model"], tune["dataset"]
    if _sequences(tune):
        return sequence_nodes.train_sequence_model(
            train_full, train_valid, None, block, kind=kind, dataset=dataset
        )
    return train.train_model(train_full, block, kind=kind, dataset=dataset)


def evaluate_final(
    model: Any,
    train_full: pl.DataFrame,
    train_valid: pl.DataFrame,
    test: pl.DataFrame,
    evaluation: dict[str, Any],
    sequence_evaluation: dict[str, Any],
    tune: dict[str, Any],
) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """The final model on ``test`` next to the baselines, as the training templates do: the
    session evaluation for next-item models (the last-item protocols on user-sequence
    datasets), the user-based full ranking (training items left out) with popularity and
    co-occurrence for user-item models."""
    kind = tune["model"]
    if model.task == "next_item" and _sequences(tune):
        return sequence_nodes.evaluate_sequence_models(
            model, train_full, train_valid, test, sequence_evaluation, kind=kind
        )
    if model.task == "user_item":
        return user_item.evaluate_time(model, train_full, test, evaluation, name=kind)
    return train.evaluate_models(model, train_full, test, evaluation, kind=kind)


def _final_protocol(
    metrics: dict[str, dict[str, float]],
    sequence_evaluation: dict[str, Any],
    tune: dict[str, Any],
) -> tuple[dict[str, dict[str, float]], str]:
    """The final model's metrics as reports show them, and their protocol in words."""
    task = model_class(tune["model"]).task
    if _sequences(tune) and task == "next_item":
        return sequence_nodes.main_protocol(metrics, sequence_evaluation)
    if task == "user_item":
        return metrics, "user-based full ranking on the time split, training items left out"
    return metrics, PROTOCOL_WORDS[""]


def report_final(
    history: list[dict],
    metrics: dict[str, dict[str, float]],
    final_params: dict[str, Any],
    sequence_evaluation: dict[str, Any],
    tune: dict[str, Any],
) -> tuple[Any, Any]:
    """The training template's plots of the final model (trained with ``final_params``)."""
    metrics, words = _final_protocol(metrics, sequence_evaluation, tune)
    return train.plot_report(
        history, metrics, final_params, kind=tune["model"], dataset=tune["dataset"], protocol=words
    )


def final_model_card(
    history: list[dict],
    metrics: dict[str, dict[str, float]],
    final_params: dict[str, Any],
    train_full: pl.DataFrame,
    sequence_evaluation: dict[str, Any],
    tune: dict[str, Any],
) -> str:
    """The model card next to the tuned model (``tune.model``): trained with ``final_params``."""
    kind = tune["model"]
    metrics, words = _final_protocol(metrics, sequence_evaluation, tune)
    return train.write_model_card(
        history, metrics, final_params, train_full, kind=kind, dataset=tune["dataset"],
        protocol=words, model_artifact=f"data/06_models/{tune['dataset']}/{kind}_tuned",
    )  # fmt: skip
