"""A short model card written next to every model the training template saves: the data, the
protocol, the parameters, the metrics, the training time and the source commit (Markdown)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def _value(v: Any) -> str:
    """Metrics to 4 decimals."""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _param(v: Any) -> str:
    """Parameters as given (1e-05 stays 1e-05)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def model_card(
    *,
    title: str,
    dataset: str,
    data: Mapping[str, Any],
    protocol: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Mapping[str, float]],
    model: str,
    history: Sequence[Mapping[str, Any]],
    commit: str | None,
    model_artifact: str,
) -> str:
    """The card as Markdown. ``metrics``: ``{model or baseline: {metric: value}}`` (the model's
    row first, the baselines for scale); ``data``: training-split figures (events, sessions or
    users, items)."""
    seconds = sum(float(h.get("seconds", 0.0)) for h in history)
    lines = [
        f"# Model card: {title}",
        "",
        f"- model artifact: `{model_artifact}` (the same version folder name as this card)",
        f"- dataset: `{dataset}`; training data: "
        + ", ".join(f"{v:,} {k}" for k, v in data.items()),
        f"- trained: {len(history)} epoch{'s' if len(history) != 1 else ''}, "
        f"{seconds:,.1f} s of training",
        f"- source commit: `{commit or 'unknown (not a git checkout)'}`",
        f"- written: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        "## Evaluation",
        "",
        f"Test targets under this protocol: {protocol}.",
        "",
    ]
    keys = [k for k in (metrics.get(model) or next(iter(metrics.values()), {})) if "@" in k]
    if keys:
        lines += ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name in sorted(metrics, key=lambda n: n != model):
            row = metrics[name]
            cells = " | ".join(_value(row.get(k, "")) for k in keys)
            lines.append(f"| {'**' + name + '**' if name == model else name} | {cells} |")
        n = metrics.get(model, {}).get("n_targets")
        lines += ["", f"{n:,.0f} targets." if n else ""]
    lines += ["", "## Parameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {_param(v)} |" for k, v in sorted(params.items())]
    if history:
        last = history[-1]
        lines += ["", "## Last epoch", ""]
        lines += [f"- {k}: {_value(v)}" for k, v in last.items()]
    return "\n".join(lines).rstrip() + "\n"
