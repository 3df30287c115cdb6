"""Champion/challenger decision (:mod:`recsys_pipeline.operations.champion`).

:func:`decide` is checked as a truth table (gates, first champion, margins in both modes).
End to end, tiny GRU4Rec models trained on the successor dataset (a weak one, about 0.34
MRR@20 on the window, and a strong one, about 1.0; most-popular about 0.16) go through
:func:`champion_challenger` against a temporary sqlite tracking/registry store (artifacts in a
temporary folder; the project's ``mlflow.db`` and ``mlruns`` are not touched; the tracking URI
is restored afterwards).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams  # noqa: E402
from recsys_pipeline.operations import champion as champion_module  # noqa: E402
from recsys_pipeline.operations.champion import (  # noqa: E402
    Decision,
    champion_challenger,
    common_window,
    current_champion,
    decide,
    metric_key,
)
from tests.models.behaviour import successor_sessions  # noqa: E402

N_ITEMS = 30
NAME = "champion_test_model"
LOG_KWARGS = {"include_code": False, "torch_threads": 1}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def train() -> pl.DataFrame:
    return successor_sessions(N_ITEMS, 400, seed=0)


@pytest.fixture(scope="module")
def window() -> pl.DataFrame:
    return successor_sessions(N_ITEMS, 60, seed=1, first_session_id=10_000, t0=10_000)


def _gru(train: pl.DataFrame, layers: list[int], n_epochs: int, lr: float) -> GRU4Rec:
    params = GRU4RecParams(
        layers=layers, batch_size=16, n_sample=16, n_epochs=n_epochs, learning_rate=lr, device="cpu"
    )
    return GRU4Rec(params).fit(train, progress=False)


@pytest.fixture(scope="module")
def weak() -> GRU4Rec:
    return _gru(successor_sessions(N_ITEMS, 100, seed=0), [8], 1, 0.02)


@pytest.fixture(scope="module")
def strong(train: pl.DataFrame) -> GRU4Rec:
    return _gru(train, [32], 4, 0.1)


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[MlflowClient]:
    """A fresh temporary sqlite tracking store (also the registry) per test; the tracking URI
    is restored afterwards."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment(
            "champion-test", artifact_location=(tmp_path / "artifacts").as_uri()
        )
        mlflow.set_experiment(experiment_id=experiment)
        yield MlflowClient(tracking_uri=uri)
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


# --------------------------------------------------------------------------- decide()
def _m(mrr: float, **extra: float) -> dict[str, float]:
    return {"mrr@20": mrr, "recall@20": 0.5, "seconds": 1.0, **extra}


BASE = _m(0.1)


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "margin_mode", "promote", "reason"),
    [
        # gates come first, even without a champion
        (_m(math.nan), None, 0.0, "relative", False, "challenger has NaN metrics"),
        (_m(0.5, **{"recall@20": math.inf}), _m(0.1), 0.0, "relative", False, "NaN metrics"),
        (_m(0.1), None, 0.0, "relative", False, "does not beat most-popular: mrr@20 0.1 <= 0.1"),
        (_m(0.05), _m(0.01), 0.0, "absolute", False, "does not beat most-popular"),
        # first run
        (_m(0.3), None, 0.5, "relative", True, "first champion"),
        # relative margin: 0.3 * 1.1 = 0.33
        (_m(0.33), _m(0.3), 0.1, "relative", True, "beats the champion"),
        (_m(0.329), _m(0.3), 0.1, "relative", False, "does not beat the champion"),
        (_m(0.31), _m(0.3), 0.0, "relative", True, "beats the champion"),
        (_m(0.3), _m(0.3), 0.0, "relative", False, "does not beat the champion"),
        (_m(0.2), _m(0.3), 0.0, "relative", False, "does not beat the champion"),
        # absolute margin: 0.3 + 0.05 = 0.35
        (_m(0.35), _m(0.3), 0.05, "absolute", True, "beats the champion"),
        (_m(0.349), _m(0.3), 0.05, "absolute", False, "does not beat the champion"),
        (_m(0.3), _m(0.3), 0.0, "absolute", False, "does not beat the champion"),
        (_m(0.3001), _m(0.3), 0.0, "absolute", True, "beats the champion"),
        # a champion with a NaN score is replaced
        (_m(0.3), _m(math.nan), 0.1, "relative", True, "replaces it"),
    ],
)
def test_decide_truth_table(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    margin: float,
    margin_mode: str,
    promote: bool,
    reason: str,
) -> None:
    decision = decide(challenger, champion, BASE, "mrr@20", margin, margin_mode)
    assert decision.promote is promote
    assert reason in decision.reason
    assert decision.margin == margin and decision.margin_mode == margin_mode
    assert decision.challenger_version is None
    json.dumps(decision.to_dict(), allow_nan=False)  # strict JSON even with NaN metrics


def test_decide_reason_states_both_numbers() -> None:
    decision = decide(_m(0.329), _m(0.3), BASE, margin=0.1, margin_mode="relative")
    assert "0.329" in decision.reason and "0.3" in decision.reason and "0.33" in decision.reason
    decision = decide(_m(0.4), _m(0.3), BASE, margin=0.05, margin_mode="absolute")
    assert decision.promote and "0.4" in decision.reason and "0.35" in decision.reason


def test_decide_seconds_nan_is_not_a_gate() -> None:
    assert decide(_m(0.3, seconds=math.nan), None, BASE).promote


def test_decide_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="margin_mode"):
        decide(_m(0.3), None, BASE, margin_mode="percent")
    with pytest.raises(ValueError, match="margin"):
        decide(_m(0.3), None, BASE, margin=-0.1)
    with pytest.raises(ValueError, match="missing"):
        decide(_m(0.3), None, BASE, primary="mrr@5")


def test_decision_to_dict() -> None:
    decision = decide(_m(0.3), _m(0.2), BASE, champion_version="3", model_name="m")
    out = decision.to_dict()
    assert set(out) == {f.name for f in Decision.__dataclass_fields__.values()}
    assert out["champion"]["mrr@20"] == 0.2 and out["champion_version"] == "3"
    assert out["model_name"] == "m" and out["time"]
    assert json.loads(decision.to_json()) == out


def test_metric_key() -> None:
    assert metric_key("challenger", "mrr@20") == "challenger.mrr_at_20"
    assert metric_key("baseline", "n_targets") == "baseline.n_targets"


# --------------------------------------------------------------------------- registry
def _alias_version(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def _run(challenger: GRU4Rec, window: pl.DataFrame, train: pl.DataFrame, **kw: Any) -> Decision:
    with mlflow.start_run() as run:
        decision = champion_challenger(challenger, window, train, NAME, log_kwargs=LOG_KWARGS, **kw)
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/decision.json")
    assert logged == decision.to_dict()
    data = MlflowClient().get_run(run.info.run_id).data
    assert data.metrics["decision.promote"] == float(decision.promote)
    assert data.metrics["challenger.mrr_at_20"] == pytest.approx(decision.challenger["mrr@20"])
    assert data.metrics["baseline.mrr_at_20"] == pytest.approx(decision.baseline["mrr@20"])
    if decision.champion is not None:
        assert data.metrics["champion.mrr_at_20"] == pytest.approx(decision.champion["mrr@20"])
    assert data.tags["decision.reason"] == decision.reason
    return decision


def test_champion_challenger_end_to_end(
    tracking: MlflowClient,
    weak: GRU4Rec,
    strong: GRU4Rec,
    window: pl.DataFrame,
    train: pl.DataFrame,
) -> None:
    client = tracking
    assert current_champion(client, NAME) is None

    # first run: no champion; the weak model beats most-popular and is promoted
    first = _run(weak, window, train, margin=0.05)
    assert first.promote and "first champion" in first.reason
    assert first.champion is None and first.champion_version is None
    assert first.challenger["mrr@20"] > first.baseline["mrr@20"]
    assert first.challenger_version == "1" and _alias_version(client) == "1"

    # the champion downloads and loads with the same scores
    found = current_champion(client, NAME)
    assert found is not None and found[0] == "1"
    loaded = GRU4Rec.load(found[1], device="cpu")
    assert loaded.item_ids.tolist() == weak.item_ids.tolist()

    # the strong model beats the weak champion by more than 5 %: promoted
    better = _run(strong, window, train, margin=0.05)
    assert better.promote and "beats the champion" in better.reason
    assert better.champion_version == "1"
    assert better.champion is not None
    assert better.champion["mrr@20"] == pytest.approx(first.challenger["mrr@20"])
    assert better.challenger["mrr@20"] > better.champion["mrr@20"] * 1.05
    # all three are scored on the same targets
    assert better.challenger["n_targets"] == better.champion["n_targets"]
    assert better.challenger["n_targets"] == better.baseline["n_targets"]
    assert better.window_rows == {"total": window.height, "common": window.height}
    assert better.challenger_version == "2" and _alias_version(client) == "2"

    # the weak model again: worse, not registered, the alias stays
    worse = _run(weak, window, train, margin=0.05)
    assert not worse.promote and "does not beat the champion" in worse.reason
    assert worse.champion_version == "2" and worse.challenger_version is None
    assert _alias_version(client) == "2"
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2

    # the same (equal) model with register_rejected: registered for audit, no alias
    equal = _run(strong, window, train, margin=0.0, register_rejected=True)
    assert not equal.promote and equal.challenger_version == "3"
    assert _alias_version(client) == "2"
    tags = client.get_model_version(NAME, "3").tags
    assert tags["decision"] == "rejected" and tags["decision.reason"] == equal.reason


def test_champion_challenger_without_active_run(
    tracking: MlflowClient, weak: GRU4Rec, window: pl.DataFrame, train: pl.DataFrame
) -> None:
    decision = champion_challenger(weak, window, train, NAME, log_kwargs=LOG_KWARGS)
    assert decision.promote and mlflow.active_run() is None
    runs = mlflow.search_runs(output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["decision.promote"] == "true"


def test_baseline_gate_end_to_end(
    tracking: MlflowClient, window: pl.DataFrame, train: pl.DataFrame
) -> None:
    """A challenger no better than most-popular is not promoted even on the first run: a model
    trained on reversed sessions predicts the predecessor instead of the successor."""
    backwards = _gru(train.with_columns(-pl.col("Time")).sort("Time"), [8], 1, 0.05)
    decision = _run(backwards, window, train)
    assert not decision.promote and "does not beat most-popular" in decision.reason
    assert decision.challenger_version is None
    assert current_champion(tracking, NAME) is None
    # registered for audit: the registered model exists, still without a champion
    audited = _run(backwards, window, train, register_rejected=True)
    assert not audited.promote and audited.challenger_version == "1"
    assert current_champion(tracking, NAME) is None


@pytest.mark.parametrize("where", ["alias", "register"])
def test_crash_leaves_champion_untouched(
    tracking: MlflowClient,
    weak: GRU4Rec,
    strong: GRU4Rec,
    window: pl.DataFrame,
    train: pl.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    client = tracking
    assert _run(weak, window, train).promote
    assert _alias_version(client) == "1"

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt("killed")

    if where == "alias":
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", boom)
    else:
        monkeypatch.setattr(champion_module, "log_pyfunc_model", boom)
    with pytest.raises(KeyboardInterrupt), mlflow.start_run():
        champion_challenger(strong, window, train, NAME, log_kwargs=LOG_KWARGS)
    monkeypatch.undo()
    assert _alias_version(client) == "1"
    n_versions = len(client.search_model_versions(f"name='{NAME}'"))
    assert n_versions == (2 if where == "alias" else 1)
    # the next, uninterrupted run promotes it
    again = _run(strong, window, train)
    assert again.promote and again.champion_version == "1"
    assert _alias_version(client) == again.challenger_version == str(n_versions + 1)


def test_common_window_keeps_what_every_model_knows() -> None:
    """A champion that never saw an item is not scored on fewer targets than the challenger
    that grew its tables for it: rows with an item (or user) one model lacks go for all."""
    from types import SimpleNamespace

    import numpy as np

    window = pl.DataFrame(
        {"UserId": [1, 1, 2, 3], "ItemId": [10, 11, 12, 10], "Time": [1, 2, 3, 4]}
    )
    champion = SimpleNamespace(item_ids=np.array([10, 11]), user_ids=np.array([1, 2, 3]))
    challenger = SimpleNamespace(item_ids=np.array([10, 11, 12]), user_ids=np.array([1, 2]))
    assert common_window(window, [challenger, champion])["ItemId"].to_list() == [10, 11, 10]
    both = common_window(window, [challenger, champion], users=True)
    assert both.select("UserId", "ItemId").rows() == [(1, 10), (1, 11)]
