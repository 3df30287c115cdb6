"""Nodes of the ``compare`` pipeline: train and evaluate every model of a dataset's task on one
split under one protocol -> one table (JSON and markdown) -> one plot.

Each model trains with its parameter block resolved for the dataset (``<model>.defaults``
overridden by ``<model>.<dataset>``, then by ``compare.overrides.<model>``), exactly as the
training template trains it, and is evaluated with the template's protocol:

* session datasets: every position after a test session's first, full ranking
  (``params:evaluation``);
* user-sequence datasets: each user's test item after its training and validation items, under
  every protocol of ``params:sequence_evaluation`` (the validation item drives early stopping
  for models whose block sets ``patience``);
* MovieLens' time split (user-item models): full ranking minus the user's training items.

The most-popular and co-occurrence baselines of the task are rows of the same table. A model
that fails is a row with its error; the others still run. Per model: training seconds, epochs,
training throughput (targets/s over all epochs), peak RSS while training (sampled) and, on
CUDA, torch's peak allocation.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import mlflow
import polars as pl
import torch

from recsys_pipeline.evaluation.user_baselines import UserCooccurrence, UserPopularity
from recsys_pipeline.evaluation.user_ranking import full_ranking
from recsys_pipeline.models.baselines import LastItemCooccurrence, MostPopular
from recsys_pipeline.models.registry import kinds, model_class, named_kinds, resolve_params
from recsys_pipeline.pipelines.compare.splits import compare_split, layout, task
from recsys_pipeline.pipelines.train import nodes as train_nodes
from recsys_pipeline.pipelines.train import sequence_nodes
from recsys_pipeline.pipelines.train_neumf import nodes as neumf_nodes
from recsys_pipeline.reports import plots
from recsys_pipeline.training.memory import PeakMemory

logger = logging.getLogger(__name__)

_SETTINGS = {"dataset", "models", "baselines", "overrides", "plot_cutoff"}
_BASELINES = {
    "next_item": {
        "most_popular": MostPopular.fit,
        "last_item_cooccurrence": LastItemCooccurrence.fit,
    },
    "user_item": {
        "popularity": lambda train: UserPopularity().fit(train),
        "cooccurrence": lambda train: UserCooccurrence().fit(train),
    },
}


class CompareError(ValueError):
    """A ``compare`` setting that cannot run (unknown model or setting, a model of the wrong
    task, no parameter block)."""


def chosen_models(compare: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """The models to compare: ``compare.models`` (checked; a list, or one string with the names
    joined by ``+`` or spaces, as ``--params`` allows no comma inside a value), or every
    registered model of the dataset's task (``kinds(task)``)."""
    unknown = sorted(set(compare) - _SETTINGS)
    if unknown:
        raise CompareError(f"unknown compare setting(s) {unknown}; valid: {sorted(_SETTINGS)}")
    dataset = compare["dataset"]
    fitting = kinds(task(dataset))
    models = named_kinds(compare.get("models") or fitting)
    for kind in models:
        if kind not in kinds():
            raise CompareError(f"compare.models: unknown model {kind!r}; known: {kinds()}")
        if kind not in fitting:
            raise CompareError(
                f"compare.models: {kind!r} is a {model_class(kind).task} model; "
                f"{dataset!r} needs {task(dataset)} models: {fitting}"
            )
        block = parameters.get(kind) or {}
        if "defaults" not in block and dataset not in block:
            raise CompareError(f"no parameters {kind}.defaults or {kind}.{dataset}")
    for kind in compare.get("overrides") or {}:
        if kind not in models:
            raise CompareError(f"compare.overrides.{kind}: {kind!r} is not compared ({models})")
    return list(models)


def _model_params(kind: str, dataset: str, compare: dict, parameters: dict) -> dict[str, Any]:
    params = resolve_params(parameters[kind], dataset)
    params |= dict((compare.get("overrides") or {}).get(kind) or {})
    model_class(kind).params_class.from_dict(  # fail before training, with the field's name
        {k: v for k, v in params.items() if k not in ("num_threads", "pretrain")}
    )
    return params


def _throughput(history: list[dict]) -> float | None:
    """Training targets per second over all epochs (epochs weighted by their seconds)."""
    timed = [h for h in history if h.get("seconds") and h.get("targets_per_s") is not None]
    if not timed:
        return None
    seconds = sum(h["seconds"] for h in timed)
    return sum(h["targets_per_s"] * h["seconds"] for h in timed) / seconds


class _Splits:
    """The three splits of one dataset and how its models train and are evaluated."""

    def __init__(
        self,
        dataset: str,
        train: pl.DataFrame,
        valid: pl.DataFrame,
        test: pl.DataFrame,
        items: pl.DataFrame,
        training: dict[str, Any],
        evaluation: dict[str, Any],
        sequence_evaluation: dict[str, Any],
    ) -> None:
        self.dataset, self.layout = dataset, layout(dataset)
        self.train, self.valid, self.test = train, valid, test
        # the item catalogue of a user-sequence dataset; elsewhere the training items
        self.items = items if self.layout == "sequences" else None
        self.training = training
        self.evaluation, self.sequence_evaluation = evaluation, sequence_evaluation
        rename = {"UserId": "SessionId"} if self.layout == "sequences" else {}
        self.sessions = [f.rename(rename) if rename else f for f in (train, valid, test)]

    def fit(self, kind: str, params: dict[str, Any]) -> tuple[Any, list[dict]]:
        block = {"defaults": params}
        if self.layout == "sequences":
            model, history, _ = sequence_nodes.train_sequence_model(
                self.train, self.valid, self.items, block, self.training, kind=kind,
                dataset=self.dataset,
            )  # fmt: skip
        elif self.layout == "user_item":
            model, history, _ = neumf_nodes.train_neumf_time(self.train, block)
        else:
            model, history, _ = train_nodes.train_model(
                self.train, block, self.training, kind=kind, dataset=self.dataset
            )
        return model, history

    def fit_baseline(self, name: str) -> Any:
        fit = _BASELINES[task(self.dataset)][name]
        return fit(self.sessions[0] if self.layout == "sequences" else self.train)

    def evaluate(self, model: Any) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        """``{protocol: {metric: value}}`` and ``{protocol: protocol in words}``."""
        if self.layout == "sequences":
            train, valid, test = self.sessions
            metrics, words = {}, {}
            for protocol in self.sequence_evaluation["protocols"]:
                values, label = sequence_nodes.evaluate_protocol(
                    model, train, valid, test, self.sequence_evaluation, protocol
                )
                prefix = sequence_nodes.PROTOCOL_LABELS[protocol]
                metrics[prefix] = {k.split(".", 1)[1]: v for k, v in values.items()}
                words[prefix] = label
            return metrics, words
        settings = self.evaluation
        if self.layout == "user_item":
            result = full_ranking(
                model,
                self.test,
                exclude=self.train,
                cutoffs=tuple(settings["cutoffs"]),
                mode=settings["mode"],
                progress=False,
            )
            name = "users"
        else:
            result = train_nodes.evaluate_one(model, self.test, settings | {"progress": False})
            name = "sessions"
        values = {k: float(v) for k, v in result.items() if "@" in k or k == "n_targets"}
        return {name: values}, {name: result.label()}


def _mlflow_child(name: str, dataset: str, params: dict[str, Any], row: dict[str, Any]) -> None:
    """One nested MLflow run per model under the pipeline's run (skipped without one)."""
    if mlflow.active_run() is None:
        return
    with mlflow.start_run(run_name=f"{name}-{dataset}", nested=True):
        mlflow.set_tags(
            {"dataset": dataset, "model": name, "pipeline": "compare", "status": row["status"]}
        )
        if params:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        if row["error"]:
            mlflow.set_tag("error", row["error"][:5000])
        flat = {
            f"{protocol}.{key.replace('@', '_at_')}": value
            for protocol, values in row["metrics"].items()
            for key, value in values.items()
        }
        flat |= {
            k: float(row[k])
            for k in ("train_seconds", "epochs", "targets_per_s", "peak_rss_mib", "peak_cuda_mib")
            if row.get(k) is not None
        }
        mlflow.log_metrics(flat)
        for epoch in row["history"]:
            step = int(epoch.get("epoch", 0))
            per_epoch = {
                f"epoch.{k}": float(v)
                for k, v in epoch.items()
                if k != "epoch" and isinstance(v, int | float)
            }
            mlflow.log_metrics(per_epoch, step=step)
        if row["status"] == "failed":
            mlflow.end_run(status="FAILED")


def _run_one(
    name: str,
    fit: Callable[[], tuple[Any, list[dict]]],
    splits: _Splits,
    protocols: dict[str, str],
) -> dict[str, Any]:
    """Train (``fit``) and evaluate one model; its failure becomes the row's ``error``."""
    threads = torch.get_num_threads()
    row: dict[str, Any] = {
        "model": name,
        "status": "ok",
        "error": None,
        "epochs": None,
        "train_seconds": None,
        "targets_per_s": None,
        "peak_rss_mib": None,
        "peak_cuda_mib": None,
        "eval_seconds": None,
        "metrics": {},
        "history": [],
    }
    try:
        with PeakMemory() as peak:
            start = time.perf_counter()
            model, history = fit()
            row["train_seconds"] = time.perf_counter() - start
        row["peak_rss_mib"], row["peak_cuda_mib"] = peak.rss_mib, peak.cuda_mib
        row["epochs"] = len(history) if history else None
        row["targets_per_s"] = _throughput(history)
        row["history"] = history
        start = time.perf_counter()
        row["metrics"], words = splits.evaluate(model)
        row["eval_seconds"] = time.perf_counter() - start
        protocols.update(words)
    except Exception as err:  # noqa: BLE001 (one model's failure must not stop the others)
        row["status"], row["error"] = "failed", f"{type(err).__name__}: {err}"
        logger.warning("compare: %s failed: %s", name, row["error"])
        logger.debug("compare: %s failed", name, exc_info=True)
    finally:
        torch.set_num_threads(threads)  # a block's num_threads must not leak into the next
        gc.collect()
    return row


def compare_models(
    train: pl.DataFrame,
    valid: pl.DataFrame,
    test: pl.DataFrame,
    items: pl.DataFrame,
    compare: dict[str, Any],
    parameters: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    sequence_evaluation: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, dict]]:
    """Every model of ``compare.models`` (default: every registered model of the dataset's
    task) and the task's baselines, trained on ``train`` and evaluated on ``test``. On a
    user-sequence dataset ``items`` (its item catalogue) is every model's item table.

    Returns the comparison (JSON: dataset, splits, protocols in words, one row per model) and
    its figures for MLflow (``<dataset>.<model>.<protocol>.<metric>``; each model also gets a
    nested run). Every setting is checked before any training.
    """
    dataset = compare["dataset"]
    models = chosen_models(compare, parameters)
    params = {kind: _model_params(kind, dataset, compare, parameters) for kind in models}
    splits = _Splits(dataset, train, valid, test, items, training, evaluation, sequence_evaluation)
    protocols: dict[str, str] = {}
    rows = []
    names = list(_BASELINES[task(dataset)]) if compare.get("baselines", True) else []
    for name in [*names, *models]:
        logger.info("compare: %s on %s", name, dataset)
        if name in params:
            row = _run_one(name, lambda k=name: splits.fit(k, params[k]), splits, protocols)
        else:
            row = _run_one(name, lambda n=name: (splits.fit_baseline(n), []), splits, protocols)
        _mlflow_child(name, dataset, params.get(name, {}), row)
        rows.append(row)
    split_files = {role: compare_split(dataset, role) for role in ("train", "valid", "test")}
    if splits.items is not None:
        split_files["items"] = compare_split(dataset, "items")
    result = {
        "dataset": dataset,
        "task": task(dataset),
        "splits": split_files,
        "rows_in_splits": {
            role: frame.height
            for role, frame in zip(
                split_files, (train, valid, test, items)[: len(split_files)], strict=True
            )
        },
        "protocols": protocols,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": rows,
    }
    tracked = {
        f"{dataset}.{row['model']}.{protocol}.{key.replace('@', '_at_')}": {
            "value": value,
            "step": 0,
        }
        for row in rows
        for protocol, values in row["metrics"].items()
        for key, value in values.items()
    }
    return result, tracked


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as markdown: one metrics table per protocol (named in its heading), then
    training cost per model; failed models with their error. Also logged once."""
    rows = result["models"]
    lines = [
        f"# Models compared on `{result['dataset']}` ({result['task']})",
        "",
        "Splits: "
        + ", ".join(
            f"{role} `{name}` ({result['rows_in_splits'][role]:,} rows)"
            for role, name in result["splits"].items()
        )
        + f". Device: {result['device']}. Created {result['created_utc']}.",
    ]
    for protocol, words in result["protocols"].items():
        keys = next(list(r["metrics"][protocol]) for r in rows if protocol in r["metrics"])
        metric_keys = [k for k in keys if "@" in k]
        lines += ["", f"## {protocol}: {words}", ""]
        lines.append("| model | " + " | ".join(metric_keys) + " | targets |")
        lines.append("|---" * (len(metric_keys) + 2) + "|")
        for row in rows:
            values = row["metrics"].get(protocol)
            if values is None:
                cells = ["failed" if row["status"] == "failed" else "-"] * len(metric_keys)
                lines.append(f"| {row['model']} | " + " | ".join(cells) + " | - |")
                continue
            cells = [_fmt(values.get(k)) for k in metric_keys]
            lines.append(
                f"| {row['model']} | "
                + " | ".join(cells)
                + f" | {_fmt(values.get('n_targets'), 0)} |"
            )
    lines += [
        "",
        "## Training",
        "",
        "Peak RSS: the process's resident memory while the model trained (sampled every 50 ms). "
        "Targets/s: training targets per second over all epochs.",
        "",
        "| model | status | epochs | train s | targets/s | peak RSS MiB | peak CUDA MiB | eval s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        status = row["status"] if not row["error"] else f"failed: {row['error'][:200]}"
        lines.append(
            f"| {row['model']} | {status} | {_fmt(row['epochs'], 0)} | "
            f"{_fmt(row['train_seconds'], 1)} | {_fmt(row['targets_per_s'], 0)} | "
            f"{_fmt(row['peak_rss_mib'], 0)} | {_fmt(row['peak_cuda_mib'], 0)} | "
            f"{_fmt(row['eval_seconds'], 1)} |"
        )
    for line in _summary(result):
        logger.info("%s", line)
    return "\n".join(lines) + "\n"


def _summary(result: dict[str, Any]) -> list[str]:
    """A few short lines for the console: the first protocol's metrics at its largest cut-off
    per model (the markdown report has every figure)."""
    protocol = next(iter(result["protocols"]), None)
    lines = [f"compare {result['dataset']}: {protocol}: {result['protocols'].get(protocol)}"]
    for row in result["models"]:
        values = row["metrics"].get(protocol)
        if values is None:
            lines.append(f"  {row['model']:<24} {row['error'] or row['status']}"[:200])
            continue
        cutoff = max(int(k.split("@")[1]) for k in values if "@" in k)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k.endswith(f"@{cutoff}"))
        seconds = f"  train {row['train_seconds']:.1f} s" if row["epochs"] else ""
        lines.append(f"  {row['model']:<24} {shown}{seconds}")
    return lines


def plot_comparison(result: dict[str, Any], compare: dict[str, Any]) -> Any:
    """Recall, MRR and NDCG of every model that finished, under the first protocol (named in
    the title, with the number of targets), at one cut-off (``compare.plot_cutoff``; default
    the largest) so that many models stay readable."""
    protocol = next(iter(result["protocols"]), None)
    done = {r["model"]: r["metrics"][protocol] for r in result["models"]
            if protocol in r.get("metrics", {})}  # fmt: skip
    if protocol is None or not done:
        return plots.metrics_figure({}, title=f"{result['dataset']}: no model finished")
    first = next(iter(done.values()))
    cutoffs = sorted({int(k.split("@")[1]) for k in first if "@" in k})
    cutoff = int(compare.get("plot_cutoff") or cutoffs[-1])
    n_targets = first.get("n_targets")
    targets = f", {n_targets:,.0f} targets" if n_targets else ""
    return plots.metrics_figure(
        done,
        title=f"{result['dataset']}: every model, test{targets}\n{result['protocols'][protocol]}",
        cutoffs=[cutoff],
    )
