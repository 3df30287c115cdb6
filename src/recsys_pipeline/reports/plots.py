"""The report plots of training, tuning and comparison runs.

Figures are built with matplotlib's object API (``Figure``, no pyplot): no backend is chosen
or changed, nothing stays open, and nodes may draw from worker threads. Every title names the dataset, the model, the loss or the protocol and the number of targets;
epochs are whole numbers; bars carry their values; the validation metric, when training measured
one, is drawn next to the training loss on its own axis.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: metric families drawn (a panel each), in this order, with their display names
FAMILIES = (("recall", "Recall"), ("hr", "HR"), ("mrr", "MRR"), ("ndcg", "NDCG"))
_KEY = re.compile(r"^(?P<family>[a-z]+)@(?P<k>\d+)$")


def training_figure(
    history: Sequence[Mapping[str, Any]],
    *,
    title: str,
    loss: str,
    valid_metric: str | None = None,
) -> Figure:
    """Training loss per epoch (``history``: ``{"epoch", "loss"[, "valid_metric"]}`` rows) and,
    where rows carry ``valid_metric``, that metric on a right-hand axis."""
    fig = Figure(figsize=(8, 5), dpi=110)
    ax = fig.subplots()
    if not history:
        ax.text(0.5, 0.5, "no training epochs", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(title)
        return fig
    epochs = [int(h["epoch"]) for h in history]
    lines = ax.plot(epochs, [h["loss"] for h in history], marker="o", color="C0",
                    label=f"training loss ({loss})")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"training loss ({loss}, lower is better)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    measured = [(int(h["epoch"]), h["valid_metric"]) for h in history
                if h.get("valid_metric") is not None]  # fmt: skip
    if measured:
        name = f"validation {valid_metric or 'metric'}"
        right = ax.twinx()
        lines += right.plot([e for e, _ in measured], [v for _, v in measured], marker="s",
                            color="C1", label=name)  # fmt: skip
        right.set_ylabel(f"{name} (higher is better)")
        right.margins(y=0.15)  # room for the "best" label
        best = max(measured, key=lambda ev: ev[1])
        right.annotate(f"best {best[1]:.4f} (epoch {best[0]})", best, textcoords="offset points",
                       xytext=(0, 8), ha="center", fontsize=8, color="C1")  # fmt: skip
    fig.legend(lines, [line.get_label() for line in lines], loc="lower center",
               ncol=len(lines), fontsize=9, frameon=False)  # fmt: skip
    ax.set_title(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def metrics_figure(
    metrics: Mapping[str, Mapping[str, float]],
    *,
    title: str,
    cutoffs: Sequence[int] | None = None,
) -> Figure:
    """One panel per metric family present (Recall/HR, MRR, NDCG), the cut-offs on the x axis
    (``cutoffs``: only those), one bar per model with its value written on it.

    ``metrics``: ``{model: {"recall@20": value, ...}}`` (other keys are ignored)."""
    keys = {key for values in metrics.values() for key in values if _KEY.match(key)}
    found = {(m["family"], int(m["k"])) for key in keys if (m := _KEY.match(key))}
    families = [(f, label) for f, label in FAMILIES if any(fam == f for fam, _ in found)]
    ks = sorted({k for _, k in found if cutoffs is None or k in cutoffs})
    if not families or not ks or not metrics:
        fig = Figure(figsize=(8, 5), dpi=110)
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no metrics", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(title)
        return fig
    models = list(metrics)
    width = 0.8 / len(models)
    panel_width = max(3.5, 0.9 * len(ks) * len(models) * 0.45 + 1.5)
    fig = Figure(figsize=(panel_width * len(families), 5.2), dpi=110)
    axes = fig.subplots(1, len(families), sharey=True, squeeze=False)
    top = max((metrics[m].get(f"{f}@{k}", 0.0) for m in models for f, _ in families for k in ks),
              default=1.0)  # fmt: skip
    for ax, (family, label) in zip(axes[0], families, strict=True):
        for i, model in enumerate(models):
            values = [metrics[model].get(f"{family}@{k}", float("nan")) for k in ks]
            bars = ax.bar([j + i * width for j in range(len(ks))], values, width,
                          label=model, color=f"C{i}")  # fmt: skip
            ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ks))], [f"@{k}" for k in ks])
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("score (higher is better)")
    axes[0][0].set_ylim(0, min(1.0, top * 1.25) if top > 0 else 1.0)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(models), 6), fontsize=9,
               frameon=False)  # fmt: skip
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
