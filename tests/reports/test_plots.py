"""The report plots say what they show: dataset, model, loss, protocol and target count in the
title, whole-number epochs, NDCG next to Recall and MRR, values on the bars, the validation
metric beside the loss when training measured one."""

from __future__ import annotations

import io

from recsys_pipeline.pipelines.train.nodes import plot_report

HISTORY = [{"epoch": e, "loss": 7.0 - e} for e in (1, 2, 3)]
METRICS = {
    model: {f"{f}@{k}": base * k / 20 for f in ("recall", "mrr", "ndcg") for k in (5, 20)}
    | {"n_targets": 1234.0}
    for model, base in (("gru4rec", 0.6), ("most_popular", 0.2))
}


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_titles_name_dataset_model_loss_protocol_and_targets() -> None:
    loss, bars = plot_report(
        HISTORY, METRICS, {"loss": "bpr-max"}, kind="gru4rec", dataset="diginetica"
    )
    [ax] = loss.axes
    assert ax.get_title() == "GRU4Rec on diginetica: training loss per epoch, 3 epochs"
    assert "bpr-max" in ax.get_ylabel()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks == [1, 2, 3]  # whole epochs only
    title = bars.texts[0].get_text()  # suptitle
    assert "diginetica" in title and "GRU4Rec" in title and "1,234 targets" in title
    assert "full ranking" in title
    assert [ax.get_title() for ax in bars.axes] == ["Recall", "MRR", "NDCG"]
    values = _texts(bars)
    assert "0.600" in values and len(values) == 3 * 2 * 2  # families x models x cut-offs
    for fig in (loss, bars):  # both render to PNG
        fig.savefig(io.BytesIO(), format="png")


def test_the_validation_metric_is_drawn_beside_the_loss() -> None:
    history = [dict(h, valid_metric=0.1 * h["epoch"]) for h in HISTORY]
    loss, _ = plot_report(
        history, METRICS, {"loss": "ce", "valid_metric": "ndcg@10"}, kind="sasrec", dataset="ml1m"
    )
    assert len(loss.axes) == 2
    assert loss.axes[1].get_ylabel() == "validation ndcg@10 (higher is better)"
    assert any(t.startswith("best 0.3000 (epoch 3)") for t in _texts(loss))


def test_no_epochs_and_no_metrics_still_give_a_figure() -> None:
    loss, bars = plot_report([], {}, None, kind="most_popular", dataset="synthetic")
    assert "no training epochs" in _texts(loss)
    assert "no metrics" in _texts(bars)
