"""The default run (synthetic -> preprocess -> GRU4Rec) end to end through a KedroSession."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from tests.pipelines.conftest import catalog, run

TINY = {
    "synthetic": {"config": {"n_events": 20000, "n_items": 300, "n_users": 2000}},
    "gru4rec": {"synthetic": {"layers": [32], "n_epochs": 1, "n_sample": 64, "batch_size": 32}},
}


def test_default_run_trains_evaluates_reports_and_recommends(project: Path):
    run(project, "__default__", session={"runtime_params": TINY})
    cat = catalog(project)
    model = cat.load("synthetic.gru4rec.model")
    assert model.n_items == cat.load("synthetic.train_full")["ItemId"].n_unique()
    metrics = cat.load("synthetic.gru4rec.metrics")
    assert set(metrics) == {"gru4rec", "most_popular", "last_item_cooccurrence"}
    for values in metrics.values():
        assert 0 <= values["mrr@20"] <= values["recall@20"] <= 1 and values["n_targets"] > 0
    history = cat.load("synthetic.gru4rec.history")
    assert len(history) == 1 and history[0]["loss"] > 0
    reports = project / "data" / "08_reporting" / "synthetic"
    assert list(reports.glob("gru4rec_loss_curve.png/*/gru4rec_loss_curve.png"))
    assert list(reports.glob("gru4rec_metrics.png/*/gru4rec_metrics.png"))
    top = cat.load("synthetic.gru4rec.recommendations")
    assert top.columns == ["SessionId", "rank", "ItemId", "score"]
    per_session = top.group_by("SessionId").agg(
        pl.len(), pl.col("score").is_sorted(descending=True)
    )
    assert per_session["len"].unique().to_list() == [20] and per_session["score"].all()
    # the model folder holds state dicts (weights, optimizer state) and JSON, no pickle
    folder = next((project / "data/06_models/synthetic/gru4rec").glob("*/gru4rec"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "history.json",
        "item_ids.json",
        "model.json",
        "optimizer.pt",
        "weights.pt",
    ]

    # every JSON file the run wrote is valid JSON for a strict parser (no NaN / Infinity)
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    written = sorted(p for p in (project / "data").rglob("*.json") if p.is_file())
    assert len(written) >= 10
    for path in written:
        json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_default_run_gru4rec_clearly_beats_both_baselines(project: Path):
    """The default `kedro run` as shipped (full default parameters): GRU4Rec beats most-popular
    and last-item co-occurrence on every reported cut-off, by >= 10 % relative on R@20/MRR@20."""
    run(project, "__default__")
    metrics = catalog(project).load("synthetic.gru4rec.metrics")
    gru, cooc, pop = (
        metrics[name] for name in ("gru4rec", "last_item_cooccurrence", "most_popular")
    )
    for key in ("recall@1", "recall@5", "recall@10", "recall@20", "mrr@5", "mrr@10", "mrr@20"):
        assert gru[key] > cooc[key] > pop[key], key
    for key in ("recall@20", "mrr@20"):
        assert gru[key] >= 1.1 * cooc[key], (key, gru[key], cooc[key])
