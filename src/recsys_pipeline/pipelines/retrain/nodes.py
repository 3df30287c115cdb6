"""Nodes of ``retrain``: incoming raw files -> protocol + validation -> challenger (fine-tuned
champion or retrained from scratch) -> champion/challenger decision on the MLflow registry.

``retrain.model``: any registered model (the registry). A next-item model (``gru4rec``, the
default) takes session files of the dataset's raw format; a user-item model (``neumf``) takes
MovieLens rating files of ``retrain.ratings_variant``, the newest ``eval_days`` of the new
ratings being the window, scored with the user-based full ranking.

The data a from-scratch challenger trains on grows with every run: the dataset's preprocessed
data (``old_train``: the filtered sessions; ``old_ratings``: MovieLens' deduplicated
ratings) plus the new data of every earlier run (``history``: one parquet partition per batch,
kedro-datasets' ``PartitionedDataset``), plus this run's new training data.

Exactly-once ingestion (:mod:`recsys_pipeline.operations.ingest`): this run's new data is stored as a
history partition after the decision, then the files are recorded in the manifest (with the
batch key) by the last node. A run killed on the way re-offers the files next time, and a
partition the manifest does not list is ignored. The registry's ``champion`` alias moves last
(:mod:`recsys_pipeline.operations.champion`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import polars as pl

from recsys_pipeline.datasets import read_events
from recsys_pipeline.models.registry import (
    create_model,
    kinds,
    load_model,
    model_class,
    resolve_params,
)
from recsys_pipeline.operations import ingest
from recsys_pipeline.operations.champion import champion_challenger, current_champion
from recsys_pipeline.pipelines.preprocess.nodes import _config
from recsys_pipeline.pipelines.preprocess.nodes import check_raw_schema as check_raw_events
from recsys_pipeline.pipelines.train.nodes import epoch_history, run_params, write_model_card
from recsys_pipeline.preprocessing import run_protocol

logger = logging.getLogger(__name__)

MODES = ("fine_tune", "scratch_growing", "scratch_sliding")
SESSION_COLUMNS = ("SessionId", "ItemId", "Time")
RATING_COLUMNS = ("UserId", "ItemId", "Time")


def _kind(params: dict[str, Any]) -> str:
    kind = params["model"]
    if kind not in kinds():
        raise ValueError(f"retrain.model must be one of {kinds()}, got {kind!r}")
    return kind


def _ratings(params: dict[str, Any]) -> bool:
    """Whether the model is a user-item model (rating files) rather than a next-item one."""
    return model_class(_kind(params)).task == "user_item"


def _columns(params: dict[str, Any]) -> tuple[str, ...]:
    return RATING_COLUMNS if _ratings(params) else SESSION_COLUMNS


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


def _file_check(params: dict[str, Any], preprocess: dict[str, Any]) -> Callable[[Path], None]:
    """Per new file: read it with the dataset's reader and run the raw Great Expectations check
    of its preprocessing pipeline (columns, kinds, no null ids or times). A file that fails is
    quarantined with the error as its report."""
    if _ratings(params):
        from recsys_pipeline.pipelines.preprocess_movielens.nodes import (
            check_raw_schema as check_raw_ratings,
        )

        variant = params.get("ratings_variant", "ml-100k")

        def check(path: Path) -> None:
            ratings = _read_ratings(params, path)
            if ratings.height == 0:
                raise ValueError(f"{path}: no ratings")
            check_raw_ratings(ratings, {"variant": f"{variant} {path.name}"})

        return check
    pp = dict(preprocess[params["dataset"]])
    fmt = pp.get("format", params["dataset"])

    def check(path: Path) -> None:
        events = read_events(fmt, path.parent, [path.name])
        if events.height == 0:
            raise ValueError(f"{path}: no events")
        check_raw_events(events, pp | {"format": f"{fmt} {path.name}"})

    return check


def scan(params: dict[str, Any], preprocess: dict[str, Any]) -> ingest.IngestReport:
    """New raw files of ``retrain.dataset`` (by checksum); unreadable ones or ones that fail the
    raw schema check are quarantined with a report and do not stop the others; files seen
    before are skipped and reported."""
    if params["mode"] not in MODES:
        raise ValueError(f"retrain.mode must be one of {MODES}, got {params['mode']!r}")
    incoming, manifest = _paths(params)
    incoming.mkdir(parents=True, exist_ok=True)
    # scan_incoming logs each skipped and quarantined file and the summary
    return ingest.scan_incoming(incoming, manifest, _file_check(params, preprocess))


def gather_history(
    old_train: pl.DataFrame,
    old_ratings: pl.DataFrame,
    history: dict[str, Callable[[], pl.DataFrame]],
    report: ingest.IngestReport,
    params: dict[str, Any],
) -> pl.DataFrame:
    """All data before this run: the dataset's preprocessed data (next-item models:
    ``old_train``; user-item models: ``old_ratings``; empty when the dataset was never
    preprocessed) and the history partitions of the batches the manifest lists as ingested, in
    that order. A partition the manifest does not list (a run killed before its commit) is
    ignored. Session ids are renumbered to stay unique across the parts."""
    columns = _columns(params)
    base = old_ratings if _ratings(params) else old_train
    parts = [base.select(columns)] if base.columns else []
    orphans = sorted(set(history) - set(report.ingested_batches))
    if orphans:
        logger.warning("ignoring history partitions no manifest entry lists: %s", orphans)
    missing = [key for key in report.ingested_batches if key not in history]
    if missing:
        logger.warning(
            "the manifest lists batches without a history partition (deleted?): %s; "
            "from-scratch challengers will not see their data",
            missing,
        )
    parts += [history[key]().select(columns) for key in report.ingested_batches if key in history]
    if "SessionId" in columns:
        offset, renumbered = 0, []
        for part in parts:
            ids = part["SessionId"].cast(pl.Int64)
            renumbered.append(part.with_columns(ids + offset))
            offset += int(ids.max() or 0) + 1 if part.height else 0
        parts = renumbered
    if not parts:
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.Int64))
    ids = [pl.col(c).cast(pl.Int64) for c in columns if c != "Time"]
    data = pl.concat([part.with_columns(ids) for part in parts], how="vertical_relaxed")
    logger.info(
        "history: %d rows (%d preprocessed, %d batch(es) of earlier runs)",
        data.height,
        base.height if base.columns else 0,
        len(parts) - (1 if base.columns else 0),
    )
    return data


def prepare(
    report: ingest.IngestReport,
    history: pl.DataFrame,
    params: dict[str, Any],
    preprocess: dict[str, Any],
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The new files through the dataset's protocol and Great Expectations; the newest
    ``eval_days`` become the evaluation window, the rest the new training data."""
    from recsys_pipeline.validation import validate_splits

    if not report.new:
        raise RuntimeError(
            f"no new files in {_paths(params)[0]} ({report.summary()}): nothing to retrain on"
        )
    if _ratings(params):
        return _prepare_ratings(report, history, params)
    pp = dict(preprocess[params["dataset"]])
    fmt = pp.get("format", params["dataset"])
    config = _config(pp | {"n_test_days": params["eval_days"], "fixed_tsplit": None})
    events = pl.concat(
        [read_events(fmt, f.path.parent, [f.path.name]) for f in report.new], how="vertical"
    )
    result = run_protocol(events, config, params["dataset"])
    train, window = result.splits["train_full"], result.splits["test"]
    validation = validate_splits(
        {"full": result.full, "train_full": train, "test": window},
        f"{params['dataset']} (incoming)",
        cut_test=result.cuts.get("cut_test"),
        cut_valid=None,
        min_item_support=config.min_item_support,
        min_session_length=config.min_session_length,
    )
    return train, window, _summary(report, train, window, result.cuts, validation)


def _summary(report, train, window, cuts, validation, **extra) -> dict[str, Any]:
    summary = {
        "batch": report.batch,
        "files": [f.path.name for f in report.new],
        "skipped": [f"{s.file.name}: {s.reason}" for s in report.skipped],
        "quarantined": [f"{q.file.name} -> {q.moved_to}: {q.reason}" for q in report.quarantined],
        "train_events": train.height,
        "window_events": window.height,
        "cuts": cuts,
        **extra,
        "validation": {"success": validation["success"], "seconds": validation.get("seconds")},
    }
    logger.info("new data: %s", summary)
    return summary


def _prepare_ratings(
    report: ingest.IngestReport, history: pl.DataFrame, params: dict[str, Any]
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """User-item models: the new rating files through ``preprocess_movielens``' protocol: each (user,
    item) pair once at its earliest time, also across runs (a pair already in ``history`` is
    dropped); the ratings of the newest ``eval_days`` are the window (the time split's test,
    cut at ``max(Time) - eval_days`` days), the rest training data; both validated with the
    time-split Great Expectations suite."""
    from recsys_pipeline.preprocessing import ncf
    from recsys_pipeline.validation import validate_rating_splits

    read = pl.concat([_read_ratings(params, f.path) for f in report.new], how="vertical")
    ratings = ncf.deduplicate_ratings(read)
    unique = ratings.height
    if history.height:
        known = history.select("UserId", "ItemId").unique()
        ratings = ratings.join(known, on=["UserId", "ItemId"], how="anti")
    if ratings.height == 0:
        raise ValueError(
            f"the new files {[f.name for f in report.new]} hold only (user, item) pairs rated "
            "before: nothing new to train on"
        )
    cut = int(ratings["Time"].max()) - int(float(params["eval_days"]) * 86400) + 1
    train, valid, window = ncf.time_split(ratings, cut, cut)
    if train.height == 0 or window.height == 0:
        raise ValueError(
            f"the new ratings give {train.height} training and {window.height} window ratings "
            f"(eval_days={params['eval_days']}): both must be non-empty"
        )
    validation = validate_rating_splits(
        {"time_train": train, "time_valid": valid, "time_test": window},
        f"{params['dataset']} (incoming)",
        protocols=("time",),
        cut_valid=cut,
        cut_test=cut,
    )
    return (
        train,
        window,
        _summary(
            report,
            train,
            window,
            {"cut_test": cut},
            validation,
            read_ratings=read.height,
            repeated_dropped=read.height - unique,
            known_pairs_dropped=unique - ratings.height,
        ),
    )


def _load_champion(params: dict[str, Any]) -> Any:
    """The registry's current champion (``mode: fine_tune`` only), loaded as its kind;
    ``None`` on the first run or in the ``scratch_*`` modes."""
    if params["mode"] != "fine_tune":
        return None
    folder = Path(tempfile.mkdtemp(prefix="champion-"))
    champion = None
    try:
        found = current_champion(mlflow.MlflowClient(), _model_name(params), dst_dir=folder)
        if found is not None:
            champion = load_model(found[1], device="cpu")
            if champion.kind != _kind(params):
                raise ValueError(
                    f"{_model_name(params)}@champion is a {champion.kind!r} model, "
                    f"retrain.model is {_kind(params)!r}"
                )
            logger.info("fine-tuning %s champion version %s", champion.kind, found[0])
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


def _training_data(
    history: pl.DataFrame, new_train: pl.DataFrame, params: dict[str, Any]
) -> pl.DataFrame:
    """From-scratch data: history + the new training data (``scratch_sliding``: only what
    starts in the last ``sliding_days``; sessions are kept or dropped whole)."""
    columns = _columns(params)
    new = new_train.select(columns)
    if "SessionId" in columns and history.height:
        new = new.with_columns(pl.col("SessionId") + int(history["SessionId"].max()) + 1)
    if not history.height:
        logger.warning("no earlier data (preprocessing or earlier runs): new data only")
    data = pl.concat([history.select(columns), new], how="vertical_relaxed")
    if params["mode"] == "scratch_sliding":
        unit = 1.0 if _ratings(params) else float(params.get("time_unit_seconds", 1.0))
        start = data["Time"].max() - params["sliding_days"] * 86400 / unit
        if "SessionId" in columns:
            keep = data.group_by("SessionId").agg(pl.col("Time").min())
            keep = keep.filter(pl.col("Time") >= start)
            data = data.join(keep.select("SessionId"), on="SessionId", how="semi")
        else:
            data = data.filter(pl.col("Time") >= start)
    data = data.sort(columns[0], "Time", maintain_order=True)
    logger.info("training a challenger from scratch on %d rows (%s)", data.height, params["mode"])
    return data


def train_challenger(
    new_train: pl.DataFrame,
    history: pl.DataFrame,
    params: dict[str, Any],
    parameters: dict[str, Any],
) -> Any:
    """``fine_tune``: continue the current champion on the new data (item tables grow, user
    tables too for user-item models; optimizer state ``carry`` or ``reset``); first run or
    ``scratch_*``: train a ``retrain.model`` from scratch with its parameter block (resolved for
    ``retrain.dataset``) on ``history`` and the new data (``scratch_sliding``: only the last
    ``sliding_days``)."""
    kind = _kind(params)
    model_params = run_params(resolve_params(parameters.get(kind), params["dataset"]))
    if model_params.pop("pretrain", False):  # a recipe of train_neumf, not a model parameter
        logger.warning("%s.pretrain is not used by retrain: the model is trained directly", kind)
    quiet = {"progress": False} if _ratings(params) else {}
    champion = _load_champion(params)
    if champion is not None:
        return _fine_tune(champion, new_train, params, **quiet)
    data = _training_data(history, new_train, params)
    return create_model(kind, model_params).fit(data, **quiet)


def decide(
    challenger: Any,
    window: pl.DataFrame,
    new_train: pl.DataFrame,
    history: pl.DataFrame,
    params: dict[str, Any],
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """Champion vs challenger vs most-popular on the same newest window; the challenger is
    registered and becomes ``champion`` only if it passes the gates and beats the champion by
    ``margin``. Returns the decision (versioned JSON, also logged to MLflow). User-item models:
    each user's earlier ratings (history and new) are left out of the ranking; the baseline is
    the popularity in the new training data."""
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
        history=history,
    )
    logger.info("decision: %s (%s)", "PROMOTE" if decision.promote else "keep", decision.reason)
    return decision.to_dict()


def challenger_card(
    challenger: Any,
    new_train: pl.DataFrame,
    decision: dict[str, Any],
    params: dict[str, Any],
) -> str:
    """The model card next to the challenger: its training data and parameters, and the
    champion/challenger/baseline metrics on the newest window with the decision."""
    metrics = {name: decision[name] for name in ("challenger", "champion", "baseline")
               if decision.get(name)}  # fmt: skip
    verdict = "promoted to champion" if decision.get("promote") else "not promoted"
    protocol = (f"the newest window (not trained on), the models' shared evaluation; "
                f"{verdict}: {decision.get('reason', '')}")  # fmt: skip
    model_params = challenger.params.to_dict() if hasattr(challenger, "params") else {}
    return write_model_card(
        epoch_history(challenger) if hasattr(challenger, "history") else [],
        metrics, model_params, new_train, kind=_kind(params), dataset=params["dataset"],
        protocol=protocol, model="challenger",
        model_artifact=f"data/06_models/{params['dataset']}/{_kind(params)}_challenger",
    )  # fmt: skip


def archive(
    report: ingest.IngestReport,
    new_train: pl.DataFrame,
    window: pl.DataFrame,
    params: dict[str, Any],
    decision: dict[str, Any],
) -> dict[str, pl.DataFrame]:
    """This run's new data (training part and window) as the history partition
    ``report.batch``, whatever the decision: later from-scratch challengers train on it. A
    retry of the same files writes the same partition again."""
    del decision  # ordering only: archive after the decision
    columns = _columns(params)
    return {report.batch: pl.concat([new_train.select(columns), window.select(columns)])}


def commit(
    report: ingest.IngestReport,
    decision: dict[str, Any],
    history: dict[str, Callable[[], pl.DataFrame]],
) -> dict[str, Any]:
    """Record the processed files in the manifest with their batch key (last step: a killed
    run re-offers them, and its history partition is ignored until then)."""
    if report.batch not in history:
        raise RuntimeError(f"history partition {report.batch} was not written: not committing")
    ingest.commit(report)
    return {
        "committed": [f.path.name for f in report.new],
        "batch": report.batch,
        "promote": decision["promote"],
    }
