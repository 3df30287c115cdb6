"""Nodes of ``retrain``: incoming raw files -> protocol + validation -> challenger (fine-tuned
champion or retrained from scratch) -> champion/challenger decision on the MLflow registry.

``retrain.model``: ``gru4rec`` (default; session files of the dataset's raw format) or ``neumf``
(MovieLens rating files of ``retrain.ratings_variant``; the newest ``eval_days`` of the new
ratings are the window, scored with the user-based full ranking). For ``neumf`` there is no old
history: the first run trains from scratch on the new ratings only (params ``neumf``), later
runs fine-tune the champion (``mode: fine_tune``) or again train from scratch on the new
ratings only (``scratch_*``).

Exactly-once ingestion (:mod:`recsys_pipeline.ingest`): new files are recorded in the manifest by
the last node only, after the decision, so a run killed on the way re-offers them next time. The
registry's ``champion`` alias moves last (:mod:`recsys_pipeline.champion`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import polars as pl
import torch

from recsys_pipeline import ingest
from recsys_pipeline.champion import champion_challenger, current_champion
from recsys_pipeline.datasets import read_events
from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
from recsys_pipeline.pipelines.preprocess.nodes import _config
from recsys_pipeline.preprocessing import run_protocol

logger = logging.getLogger(__name__)

MODES = ("fine_tune", "scratch_growing", "scratch_sliding")
MODELS = ("gru4rec", "neumf")


def _kind(params: dict[str, Any]) -> str:
    kind = params.get("model", "gru4rec")
    if kind not in MODELS:
        raise ValueError(f"retrain.model must be one of {MODELS}, got {kind!r}")
    return kind


def _model_name(params: dict[str, Any]) -> str:
    return params["registered_model_name"].format(dataset=params["dataset"], model=_kind(params))


def _read_ratings(params: dict[str, Any], path: Path) -> pl.DataFrame:
    from recsys_pipeline.datasets.movielens import read_ratings

    return read_ratings(params.get("ratings_variant", "ml-100k"), path.parent, [path.name])


def _paths(params: dict[str, Any]) -> tuple[Path, Path]:
    dataset = params["dataset"]
    return (
        Path(params["incoming_dir"].format(dataset=dataset)),
        Path(params["manifest"].format(dataset=dataset)),
    )


def scan(params: dict[str, Any], preprocess: dict[str, Any]) -> ingest.IngestReport:
    """New raw files of ``retrain.dataset`` (by checksum); unreadable ones are quarantined with
    a report and do not stop the others; files seen before are skipped and reported."""
    if params["mode"] not in MODES:
        raise ValueError(f"retrain.mode must be one of {MODES}, got {params['mode']!r}")
    kind = _kind(params)
    incoming, manifest = _paths(params)
    incoming.mkdir(parents=True, exist_ok=True)

    def validate(path: Path) -> None:
        if kind == "neumf":
            events = _read_ratings(params, path)
        else:
            fmt = preprocess[params["dataset"]].get("format", params["dataset"])
            events = read_events(fmt, path.parent, [path.name])
        if events.height == 0:
            raise ValueError(f"{path}: no events")

    report = ingest.scan_incoming(incoming, manifest, validate)
    logger.info("incoming %s: %s", incoming, report.summary())
    for skipped in report.skipped:
        logger.info("skipped (already processed): %s", skipped)
    for bad in report.quarantined:
        logger.warning("quarantined: %s", bad)
    return report


def prepare(
    report: ingest.IngestReport, params: dict[str, Any], preprocess: dict[str, Any]
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The new files through the dataset's protocol and Great Expectations; the newest
    ``eval_days`` become the evaluation window, the rest the new training data."""
    from recsys_pipeline.validation import validate_splits

    if not report.new:
        raise RuntimeError(
            f"no new files in {_paths(params)[0]} ({report.summary()}): nothing to retrain on"
        )
    if _kind(params) == "neumf":
        return _prepare_ratings(report, params)
    pp = dict(preprocess[params["dataset"]])
    fmt = pp.get("format", params["dataset"])
    config = _config(pp | {"n_test_days": params["eval_days"], "fixed_tsplit": None})
    events = pl.concat(
        [read_events(fmt, f.path.parent, [f.path.name]) for f in report.new], how="vertical"
    )
    result = run_protocol(events, config)
    train, window = result.splits["train_full"], result.splits["test"]
    validate_splits(
        {"full": result.full, "train_full": train, "test": window},
        f"{params['dataset']} (incoming)",
        cut_test=result.cuts.get("cut_test"),
        cut_valid=None,
        min_item_support=config.min_item_support,
        min_session_length=config.min_session_length,
    )
    summary = {
        "files": [f.path.name for f in report.new],
        "skipped": [str(s) for s in report.skipped],
        "quarantined": [str(q) for q in report.quarantined],
        "train_events": train.height,
        "window_events": window.height,
        "cuts": result.cuts,
    }
    logger.info("new data: %s", summary)
    return train, window, summary


def _prepare_ratings(
    report: ingest.IngestReport, params: dict[str, Any]
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """NeuMF: the new rating files; ratings after ``max(Time) - eval_days`` are the window."""
    ratings = pl.concat([_read_ratings(params, f.path) for f in report.new], how="vertical")
    ratings = ratings.select("UserId", "ItemId", "Time").sort("Time", "UserId", "ItemId")
    cut = int(ratings["Time"].max()) - int(float(params["eval_days"]) * 86400)
    train = ratings.filter(pl.col("Time") <= cut)
    window = ratings.filter(pl.col("Time") > cut)
    if train.height == 0 or window.height == 0:
        raise ValueError(
            f"the new ratings give {train.height} training and {window.height} window ratings "
            f"(eval_days={params['eval_days']}): both must be non-empty"
        )
    summary = {
        "files": [f.path.name for f in report.new],
        "skipped": [str(s) for s in report.skipped],
        "quarantined": [str(q) for q in report.quarantined],
        "train_events": train.height,
        "window_events": window.height,
        "cuts": {"cut_test": cut},
    }
    logger.info("new ratings: %s", summary)
    return train, window, summary


def _load_champion(params: dict[str, Any], load: Any, kind: str) -> Any:
    """The registry's current champion (``mode: fine_tune`` only), loaded with ``load``;
    ``None`` on the first run or in the ``scratch_*`` modes."""
    if params["mode"] != "fine_tune":
        return None
    folder = Path(tempfile.mkdtemp(prefix="champion-"))
    champion = None
    try:
        found = current_champion(
            mlflow.MlflowClient(), _model_name(params), dst_dir=folder, kind=kind
        )
        if found is not None:
            champion = load(found[1])
            logger.info("fine-tuning %s champion version %s", kind, found[0])
    finally:
        if champion is None:
            shutil.rmtree(folder, ignore_errors=True)
    return champion


def _fine_tune(champion: Any, new_train: pl.DataFrame, params: dict[str, Any], **kwargs) -> Any:
    """``champion.fine_tune`` on the new data; ``carry`` falls back to ``reset`` when the
    champion was saved without optimizer state."""
    state = params["optimizer_state"]
    if state == "carry" and not champion.optimizer_state_dict():
        logger.warning("the champion has no saved optimizer state: resetting it")
        state = "reset"
    return champion.fine_tune(
        new_train, n_epochs=params.get("fine_tune_epochs"), optimizer_state=state, **kwargs
    )


def _neumf_challenger(new_train: pl.DataFrame, params: dict[str, Any], neumf: dict[str, Any]):
    from recsys_pipeline.models.neumf import NeuMF, NeuMFParams

    model_params = dict(neumf)
    if model_params.pop("pretrain", False):
        logger.warning("neumf.pretrain is not used by retrain: NeuMF is trained directly")
    threads = model_params.pop("num_threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    champion = _load_champion(params, lambda d: NeuMF.load(d, device="cpu"), "neumf")
    if champion is not None:
        return _fine_tune(champion, new_train, params, progress=False)
    logger.info("training a NeuMF challenger from scratch on %d new ratings", new_train.height)
    return NeuMF(NeuMFParams.from_dict(model_params)).fit(new_train, progress=False)


def train_challenger(
    new_train: pl.DataFrame,
    old_train: pl.DataFrame,
    params: dict[str, Any],
    gru4rec: dict[str, Any],
    neumf: dict[str, Any] | None = None,
) -> Any:
    """``fine_tune``: continue the current champion on the new data (item tables grow;
    optimizer state ``carry`` or ``reset``); first run or ``scratch_*``: train from scratch on
    the old and new data (``scratch_sliding``: only the last ``sliding_days``). NeuMF
    (``retrain.model: neumf``): the champion is fine-tuned, or a model trained from scratch on
    the new ratings only (``old_train`` is not used)."""
    if _kind(params) == "neumf":
        return _neumf_challenger(new_train, params, neumf or {})
    model_params = dict(gru4rec[params["dataset"]])
    threads = model_params.pop("num_threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    champion = _load_champion(params, GRU4Rec.load, "gru4rec")
    if champion is not None:
        return _fine_tune(champion, new_train, params)
    if not old_train.columns:
        raise FileNotFoundError(
            "retrain.old_train is missing: run the dataset's preprocessing first"
        )
    offset = int(old_train["SessionId"].max() or 0) + 1 if old_train.height else 0
    data = pl.concat(
        [
            old_train.select("SessionId", "ItemId", "Time"),
            new_train.select(pl.col("SessionId") + offset, "ItemId", "Time"),
        ]
    )
    if params["mode"] == "scratch_sliding":
        unit = float(params.get("time_unit_seconds", 1.0))
        start = data["Time"].max() - params["sliding_days"] * 86400 / unit
        keep = data.group_by("SessionId").agg(pl.col("Time").min()).filter(pl.col("Time") >= start)
        data = data.join(keep.select("SessionId"), on="SessionId", how="semi")
    logger.info("training a challenger from scratch on %d events", data.height)
    return GRU4Rec(GRU4RecParams.from_dict(model_params)).fit(data.sort("SessionId", "Time"))


def decide(
    challenger: Any,
    window: pl.DataFrame,
    new_train: pl.DataFrame,
    params: dict[str, Any],
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """Champion vs challenger vs most-popular on the same newest window; the challenger is
    registered and becomes ``champion`` only if it passes the gates and beats the champion by
    ``margin``. Returns the decision (versioned JSON, also logged to MLflow)."""
    decision = champion_challenger(
        challenger,
        window,
        new_train,
        _model_name(params),
        primary=params["primary"],
        margin=float(params["margin"]),
        margin_mode=params["margin_mode"],
        cutoffs=tuple(evaluation["cutoffs"]),
        mode=evaluation["mode"],
        register_rejected=bool(params.get("register_rejected", False)),
        kind=_kind(params),
    )
    logger.info("decision: %s (%s)", "PROMOTE" if decision.promote else "keep", decision.reason)
    return decision.to_dict()


def commit(report: ingest.IngestReport, decision: dict[str, Any]) -> dict[str, Any]:
    """Record the processed files in the manifest (last step: a killed run re-offers them)."""
    ingest.commit(report)
    return {"committed": [f.path.name for f in report.new], "promote": decision["promote"]}
