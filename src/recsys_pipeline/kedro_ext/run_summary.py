"""The summary printed once at the end of a ``kedro run`` that trains or evaluates: the metrics
(models x Recall/MRR/NDCG at every cut-off, the protocol named), the artifacts the run wrote and
the MLflow run with the command that opens it. Plain functions of plain data
(:class:`recsys_pipeline.hooks.RunSummaryHook` gathers the data from the run)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from recsys_pipeline.reports.labels import PROTOCOL_WORDS

#: metric families shown (in this order), each at every cut-off found
FAMILIES = ("recall", "hr", "mrr", "ndcg")
MAX_WIDTH = 200
_METRIC = re.compile(r"^(?:(?P<prefix>[a-z0-9_]+)\.)?(?P<family>[a-z0-9_]+)@(?P<k>\d+)$")


def is_metrics_output(name: str) -> bool:
    """Whether a catalog entry holds ``{model: {metric: value}}`` (the training templates'
    ``<dataset>.<model>.metrics``, ``tune.metrics``, ``movielens.neumf_<split>_metrics``), not an
    MLflow history (``tracked_metrics``, ``epoch_metrics``)."""
    last = name.rsplit(".", 1)[-1]
    return last == "metrics" or (
        last.endswith("_metrics") and not last.endswith(("tracked_metrics", "epoch_metrics"))
    )


def _columns(values: Mapping[str, float], prefix: str) -> list[str]:
    found: dict[str, list[int]] = {}
    for key in values:
        match = _METRIC.match(key)
        if match and (match["prefix"] or "") == prefix and match["family"] in FAMILIES:
            found.setdefault(match["family"], []).append(int(match["k"]))
    return [
        f"{prefix + '.' if prefix else ''}{family}@{k}"
        for family in FAMILIES
        for k in sorted(found.get(family, []))
    ]


def main_prefix(values: Mapping[str, float]) -> str:
    """The protocol prefix of the first metric (``""`` for unprefixed session metrics)."""
    for key in values:
        match = _METRIC.match(key)
        if match and match["family"] in FAMILIES:
            return match["prefix"] or ""
    return ""


def metrics_table(
    title: str, metrics: Mapping[str, Mapping[str, float]], protocol: str | None = None
) -> list[str]:
    """``title``, the protocol, then one line per model: the first protocol's metrics at every
    cut-off (``n_targets`` when present). Empty when nothing looks like a metric."""
    rows = {m: v for m, v in metrics.items() if isinstance(v, Mapping)}
    first = next((v for v in rows.values() if v), None)
    if first is None:
        return []
    prefix = main_prefix(first)
    columns = _columns(first, prefix)
    if not columns:
        return []
    words = protocol or PROTOCOL_WORDS.get(prefix, prefix)
    shown = [c.split(".", 1)[1] if prefix else c for c in columns]
    width = max(len(m) for m in rows) + 2
    lines = [f"{title}: {words}"[:MAX_WIDTH]]
    lines.append(" " * width + " ".join(f"{c:>9}" for c in shown) + "   targets")
    for model, values in rows.items():
        cells = [
            f"{values[c]:>9.4f}" if isinstance(values.get(c), int | float) else f"{'-':>9}"
            for c in columns
        ]
        targets = values.get(f"{prefix}.n_targets" if prefix else "n_targets")
        count = f"{targets:>10,.0f}" if isinstance(targets, int | float) else ""
        lines.append(f"{model:<{width}}" + " ".join(cells) + count)
    return [line[:MAX_WIDTH] for line in lines]


def comparison_metrics(table: Mapping[str, Any]) -> tuple[dict[str, dict[str, float]], str]:
    """The ``compare`` pipeline's table as ``{model: metrics}`` of its first protocol (failed
    models shown by their error) and that protocol in words."""
    protocols = table.get("protocols") or {}
    protocol = next(iter(protocols), None)
    metrics: dict[str, dict[str, float]] = {}
    for row in table.get("models", []):
        values = (row.get("metrics") or {}).get(protocol) or {}
        metrics[row["model"]] = {f"{protocol}.{k}": v for k, v in values.items()}
    return metrics, f"{protocol}: {protocols.get(protocol, '')}"


def artifact_lines(paths: Iterable[tuple[str, str]], limit: int = 10) -> list[str]:
    """``name  path`` per artifact (models, metrics and reports first), at most ``limit``, and a
    count of the others."""

    def rank(item: tuple[str, str]) -> int:
        name, path = item
        if "model" in name.rsplit(".", 1)[-1]:
            return 0
        if is_metrics_output(name) or name.endswith((".table", ".report")):
            return 1
        return 2 if path.endswith((".png", ".md", ".html")) else 3

    items = sorted(paths, key=rank)
    if not items:
        return []
    width = min(max(len(n) for n, _ in items[:limit]) + 2, 48)
    lines = ["artifacts written:"]
    lines += [f"  {name:<{width}}{path}"[:MAX_WIDTH] for name, path in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more outputs of this run under data/")
    return lines


def mlflow_lines(
    run_id: str | None,
    experiment_id: str | None,
    tracking_uri: str | None,
    models: Iterable[str] = (),
) -> list[str]:
    """The MLflow run, how to open it (loopback, the project's tracking store) and how to serve
    the MLflow ``models`` it logged (in a shell with the project's venv activated: the server
    starts ``uvicorn`` from ``PATH``). Commands are never cut short."""
    if not run_id:
        return []
    lines = [f"MLflow run {run_id}"]
    if tracking_uri:
        lines.append(f"  export MLFLOW_TRACKING_URI={tracking_uri}")
        lines.append(f"  open:  mlflow ui --backend-store-uri {tracking_uri}")
        lines.append(f"  page:  http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")
    lines += [
        f"  serve: mlflow models serve -m runs:/{run_id}/{name} --env-manager local "
        "--host 127.0.0.1 --port 5001"
        for name in models
    ]
    return lines
