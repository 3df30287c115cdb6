"""Champion/challenger decision on the MLflow model registry (no Kedro imports).

A freshly trained model (the *challenger*, any registered kind) replaces the registered
*champion* only if it is better on the same, newest evaluation window:

1. The challenger, the current champion (the version carrying the alias ``champion`` of the
   registered model, loaded from its logged pyfunc model) and a :class:`MostPopular` baseline
   (fit on ``train_for_baseline``) are evaluated on the same ``window`` with the shared
   :func:`~recsys_pipeline.evaluation.evaluate` (same cut-offs, same tie mode). Each model is
   ranked over the items it knows, so window events of items a model does not know are bridged
   by the evaluation (see its protocol).
2. :func:`decide` applies the sanity gates (no NaN/inf metric; the challenger must beat the
   most-popular baseline on the primary metric) and then the margin rule against the champion;
   without a champion the challenger is promoted if it passes the gates ("first champion").
3. Only a promoted challenger is registered (a new version of ``model_name`` through
   :func:`~recsys_pipeline.serving.pyfunc.log_pyfunc_model`) unless ``register_rejected=True``, which
   registers every challenger for audit (tagged ``decision=rejected``; it never gets the alias).
4. The decision (both scores, the baseline, the reason) is logged to the active MLflow run
   (metrics ``decision.promote``, ``challenger.mrr_at_20``, ``champion.mrr_at_20``,
   ``baseline.mrr_at_20``, ...; tags ``decision.*``; the artifact ``decision.json``) and
   returned (:meth:`Decision.to_dict` is JSON-ready, for a versioned Kedro dataset).
5. Setting the alias ``champion`` on the new version is the very last step: a process killed
   at any earlier point (during retraining, evaluation, logging or registration) leaves the
   alias, and hence what ``models:/<name>@champion`` serves, on the previous version. A version
   registered by an interrupted promotion stays in the registry without the alias.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import logging
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from recsys_pipeline.evaluation import evaluate
from recsys_pipeline.models.baselines import MostPopular
from recsys_pipeline.models.registry import detect_kind, load_model
from recsys_pipeline.serving.pyfunc import MODEL_ARTIFACT, log_pyfunc_model

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

__all__ = [
    "CHAMPION_ALIAS",
    "MARGIN_MODES",
    "Decision",
    "champion_challenger",
    "common_window",
    "current_champion",
    "decide",
    "metric_key",
]

#: registry alias of the serving model
CHAMPION_ALIAS = "champion"
#: how :func:`decide` applies the margin
MARGIN_MODES = ("absolute", "relative")
#: metric keys of an evaluation result that are bookkeeping, not quality
_NOT_QUALITY = frozenset({"seconds", "targets_per_s", "users_per_s"})


@dataclasses.dataclass
class Decision:
    """The outcome of a champion/challenger comparison.

    Attributes:
        promote: whether the challenger becomes the champion.
        reason: why, stating the numbers compared.
        primary: the primary metric (a key of the metric dicts, e.g. ``"mrr@20"``).
        challenger: the challenger's metrics on the window.
        champion: the champion's metrics on the same window (``None``: no champion yet).
        baseline: the most-popular baseline's metrics on the same window.
        margin: the required improvement over the champion.
        margin_mode: ``"relative"`` (a fraction of the champion's score) or ``"absolute"``.
        champion_version: registry version of the champion compared against (``None``: none).
        challenger_version: registry version of the challenger (``None`` until registered).
        model_name: the registered model's name.
        window_rows: rows of the window (``total``) and of the part every compared model
            knows (``common``; all models are scored on that part, so on the same targets).
        time: UTC time of the decision (ISO 8601).
    """

    promote: bool
    reason: str
    primary: str
    challenger: dict[str, float]
    champion: dict[str, float] | None
    baseline: dict[str, float]
    margin: float
    margin_mode: str
    champion_version: str | None = None
    challenger_version: str | None = None
    model_name: str | None = None
    window_rows: dict[str, int] | None = None
    time: str = dataclasses.field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (metrics as plain floats; NaN/inf as ``None`` so the JSON is strict)."""
        out = dataclasses.asdict(self)
        for key in ("challenger", "champion", "baseline"):
            if out[key] is not None:
                out[key] = {k: _json_float(v) for k, v in out[key].items()}
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False)


def _json_float(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _plain(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A plain ``dict`` of floats (an :class:`EvaluationResult` is a dict subclass)."""
    return {str(k): float(v) for k, v in metrics.items()}


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    baseline: Mapping[str, float],
    primary: str = "mrr@20",
    margin: float = 0.0,
    margin_mode: str = "relative",
    *,
    champion_version: str | None = None,
    model_name: str | None = None,
) -> Decision:
    """Decide whether ``challenger`` replaces ``champion`` (pure; no MLflow).

    Rules, in order:

    1. any NaN/inf quality metric of the challenger (``seconds`` / ``targets_per_s`` aside):
       reject, ``"challenger has NaN metrics"``;
    2. ``challenger[primary] <= baseline[primary]``: reject, ``"does not beat most-popular"``;
    3. no champion: promote, ``"first champion"``;
    4. a champion whose primary score is NaN/inf: promote (a broken champion is replaced);
    5. otherwise promote iff the challenger is strictly better and beats the margin:
       ``relative``: ``c >= ch * (1 + margin)``; ``absolute``: ``c >= ch + margin``.

    Args:
        challenger, champion, baseline: metric dicts from the same evaluation window.
        primary: the metric compared (higher is better).
        margin: required improvement (``>= 0``); a fraction of the champion's score in
            ``relative`` mode (0.01 = 1 %), metric units in ``absolute`` mode.
        margin_mode: ``"relative"`` or ``"absolute"``.
        champion_version, model_name: recorded in the decision.

    Raises:
        ValueError: unknown ``margin_mode``, negative or non-finite ``margin``, or ``primary``
            missing from a metric dict.
    """
    if margin_mode not in MARGIN_MODES:
        raise ValueError(f"margin_mode must be one of {MARGIN_MODES}, got {margin_mode!r}")
    if not _finite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    for name, metrics in (
        ("challenger", challenger),
        ("baseline", baseline),
        ("champion", champion),
    ):
        if metrics is not None and primary not in metrics:
            raise ValueError(f"primary metric {primary!r} missing from the {name} metrics")

    def result(promote: bool, reason: str) -> Decision:
        return Decision(
            promote=promote,
            reason=reason,
            primary=primary,
            challenger=_plain(challenger),
            champion=None if champion is None else _plain(champion),
            baseline=_plain(baseline),
            margin=float(margin),
            margin_mode=margin_mode,
            champion_version=champion_version,
            model_name=model_name,
        )

    bad = sorted(k for k, v in challenger.items() if k not in _NOT_QUALITY and not _finite(v))
    if bad:
        return result(False, f"challenger has NaN metrics: {', '.join(bad)}")
    c = float(challenger[primary])
    b = float(baseline[primary])
    if c <= b:
        return result(False, f"does not beat most-popular: {primary} {c:.6g} <= {b:.6g}")
    if champion is None:
        return result(True, f"first champion: {primary} {c:.6g} > most-popular {b:.6g}")
    ch = float(champion[primary])
    if not math.isfinite(ch):
        return result(True, f"champion {primary} is {ch}; challenger {c:.6g} replaces it")
    if margin_mode == "relative":
        required = ch * (1.0 + margin)
        rule = f"champion {ch:.6g} * (1 + {margin:g}) = {required:.6g}"
    else:
        required = ch + margin
        rule = f"champion {ch:.6g} + {margin:g} = {required:.6g}"
    if c >= required and c > ch:
        return result(True, f"beats the champion: {primary} {c:.6g} >= {rule}")
    return result(False, f"does not beat the champion: {primary} {c:.6g} vs {rule}")


def _client(client: MlflowClient | None) -> MlflowClient:
    if client is not None:
        return client
    from mlflow import MlflowClient

    return MlflowClient()


def _model_folder(downloaded: Path) -> Path:
    """The model folder inside a downloaded pyfunc model: its ``model`` artifact (models logged
    before the artifact was named so hold one artifact, ``gru4rec`` or ``neumf``)."""
    import yaml

    mlmodel = downloaded / "MLmodel"
    if mlmodel.exists():
        spec = yaml.safe_load(mlmodel.read_text()) or {}
        artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
        entry = artifacts.get(MODEL_ARTIFACT)
        if entry is None and len(artifacts) == 1:
            entry = next(iter(artifacts.values()))
        if isinstance(entry, Mapping) and entry.get("path"):
            return downloaded / str(entry["path"])
    return downloaded / "artifacts" / MODEL_ARTIFACT


def current_champion(
    client: MlflowClient | None,
    model_name: str,
    alias: str = CHAMPION_ALIAS,
    dst_dir: str | Path | None = None,
) -> tuple[str, Path] | None:
    """The version carrying ``alias`` and its saved model folder, downloaded.

    Args:
        client: an :class:`mlflow.MlflowClient` (``None``: one for the current tracking URI).
        model_name: the registered model.
        alias: the alias to resolve.
        dst_dir: where to download the model (``None``: a new temporary folder, left to the
            caller to remove).

    Returns:
        ``(version, folder)`` where ``load_model(folder)`` loads the champion, or ``None``
        when the registered model or the alias does not exist (first run).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(client)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            logger.info("no %s@%s in the registry (%s)", model_name, alias, err.error_code)
            return None
        raise
    target = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="champion-"))
    target.mkdir(parents=True, exist_ok=True)
    source = client.get_model_version_download_uri(model_name, version.version)
    downloaded = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target))
    )
    folder = _model_folder(downloaded)
    try:
        detect_kind(folder)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{model_name} version {version.version} has no saved model folder at {folder}"
        ) from err
    logger.info("champion: %s version %s", model_name, version.version)
    return str(version.version), folder


def metric_key(role: str, name: str) -> str:
    """MLflow metric key of a metric, e.g. ``("challenger", "mrr@20")`` ->
    ``"challenger.mrr_at_20"`` (``@`` is not allowed in MLflow metric names)."""
    return f"{role}." + re.sub(r"[^0-9A-Za-z_\-. /]", "_", name.replace("@", "_at_"))


def _log_decision(decision: Decision, artifact_file: str) -> None:
    """Metrics, tags and the JSON of ``decision`` in the active MLflow run."""
    import mlflow

    metrics: dict[str, float] = {
        "decision.promote": float(decision.promote),
        "decision.margin": decision.margin,
    }
    for role in ("challenger", "champion", "baseline"):
        values = getattr(decision, role)
        for name, value in (values or {}).items():
            if _finite(value):
                metrics[metric_key(role, name)] = float(value)
    mlflow.log_metrics(metrics)
    tags = {
        "decision.promote": str(decision.promote).lower(),
        "decision.reason": decision.reason[:5000],
        "decision.primary": decision.primary,
        "decision.margin_mode": decision.margin_mode,
        "decision.model_name": str(decision.model_name),
        "decision.champion_version": str(decision.champion_version),
        "decision.challenger_version": str(decision.challenger_version),
    }
    mlflow.set_tags(tags)
    mlflow.log_dict(decision.to_dict(), artifact_file)


def common_window(window: pl.DataFrame, models: Sequence[Any], users: bool = False) -> pl.DataFrame:
    """The rows of ``window`` whose item (and with ``users``, whose user) every model knows
    (``model.item_ids`` / ``model.user_ids``). The shared evaluation drops what a model does not
    know, so without this a champion that never saw the window's new items would be scored on
    fewer, easier targets than the challenger that grew its tables for them."""
    keep = pl.lit(True)
    for column, attribute in (("ItemId", "item_ids"), ("UserId", "user_ids"))[: 2 if users else 1]:
        known = functools.reduce(
            np.intersect1d, [np.asarray(getattr(m, attribute)) for m in models]
        )
        keep = keep & pl.col(column).is_in(pl.Series(known.tolist(), dtype=window.schema[column]))
    common = window.filter(keep)
    if common.height < window.height:
        logger.info(
            "window: %d of %d rows are known to every model (%d with a new item%s left out)",
            common.height,
            window.height,
            window.height - common.height,
            " or user" if users else "",
        )
    return common


def champion_challenger(
    challenger_model: Any,
    window: pl.DataFrame,
    train_for_baseline: pl.DataFrame,
    model_name: str,
    *,
    primary: str = "mrr@20",
    margin: float = 0.0,
    margin_mode: str = "relative",
    cutoffs: Sequence[int] = (1, 5, 10, 20),
    mode: str = "standard",
    client: MlflowClient | None = None,
    alias: str = CHAMPION_ALIAS,
    register_rejected: bool = False,
    artifact_file: str = "decision.json",
    evaluate_kwargs: Mapping[str, Any] | None = None,
    log_kwargs: Mapping[str, Any] | None = None,
    history: pl.DataFrame | None = None,
) -> Decision:
    """Evaluate, decide, register and (only on promotion, last) move the champion alias.

    Args:
        challenger_model: the newly trained model (any registered kind), or its saved folder.
            The champion must be of the same task.
        window: the newest evaluation window (SessionId, ItemId, Time), the same for all models.
        train_for_baseline: events the :class:`MostPopular` baseline is fit on.
        model_name: the registered model in the MLflow model registry.
        primary, margin, margin_mode: see :func:`decide`.
        cutoffs, mode: cut-offs and tie mode of :func:`~recsys_pipeline.evaluation.evaluate`.
        client: an :class:`mlflow.MlflowClient` (``None``: one for the current tracking URI).
        alias: the alias that marks the champion.
        register_rejected: also register a rejected challenger (tag ``decision=rejected``,
            never aliased) for audit; by default only promoted challengers are registered.
        artifact_file: run artifact the decision JSON is logged as.
        evaluate_kwargs: extra arguments of ``evaluate`` (e.g. ``batch_size``, ``item_chunk``).
        log_kwargs: extra arguments of :func:`~recsys_pipeline.serving.pyfunc.log_pyfunc_model`
            (e.g. ``torch_threads``, ``include_code``).
        A model of task ``user_item`` (NeuMF) is evaluated with the user-based
            :func:`~recsys_pipeline.evaluation.user_ranking.full_ranking` on ``window`` (UserId,
            ItemId) leaving out each user's ``train_for_baseline`` items, and the baseline is
            :class:`~recsys_pipeline.evaluation.user_baselines.UserPopularity` fit on
            ``train_for_baseline``.
        history: user-item models only: the ratings before ``train_for_baseline``. Each user's items in
            either are left out of the ranking, and the popularity baseline knows their users
            (its scores stay the popularity in ``train_for_baseline``).

    Returns:
        The :class:`Decision` (``challenger_version`` set when the challenger was registered).

    The decision is logged to the active MLflow run (a new run is started if none is active).
    The alias is set only after registration and logging succeeded, so an interruption leaves
    ``models:/<model_name>@<alias>`` where it was.
    """
    import mlflow

    client = _client(client)
    challenger = (
        load_model(challenger_model, device="cpu")
        if isinstance(challenger_model, str | Path)
        else challenger_model
    )
    user_item = challenger.task == "user_item"
    eval_args: dict[str, Any] = {"progress": False, **dict(evaluate_kwargs or {})}

    seen = train_for_baseline
    if user_item and history is not None and history.height:
        columns = ["UserId", "ItemId"]
        seen = pl.concat([history.select(columns), train_for_baseline.select(columns)])

    def run_eval(model: Any, role: str, rows: pl.DataFrame) -> dict[str, float]:
        if user_item:
            from recsys_pipeline.evaluation.user_ranking import full_ranking

            result = full_ranking(
                model, rows, exclude=seen, cutoffs=cutoffs, mode=mode, **eval_args
            )
        else:
            result = evaluate(model, rows, cutoffs=cutoffs, mode=mode, **eval_args)
        metrics = _plain(result)
        logger.info("%s on the window: %s = %.6g", role, primary, metrics.get(primary, math.nan))
        return metrics

    if user_item:
        from recsys_pipeline.evaluation.user_baselines import UserPopularity

        baseline = UserPopularity().fit(seen, counts_from=train_for_baseline)
        baseline_name = "popularity"
    else:
        baseline, baseline_name = MostPopular.fit(train_for_baseline), "most-popular"
    champion_metrics: dict[str, float] | None = None
    champion_version: str | None = None
    with tempfile.TemporaryDirectory(prefix="recsys-champion-") as tmp:
        found = current_champion(client, model_name, alias=alias, dst_dir=tmp)
        champion = None
        if found is not None:
            champion_version, folder = found
            champion = load_model(folder, device="cpu")
            if champion.task != challenger.task:
                raise ValueError(
                    f"{model_name}@{alias} is a {champion.task} model ({champion.kind}); the "
                    f"challenger is a {challenger.task} model ({challenger.kind})"
                )
        models = [m for m in (challenger, champion, baseline) if m is not None]
        common = common_window(window, models, users=user_item)
        challenger_metrics = run_eval(challenger, "challenger", common)
        baseline_metrics = run_eval(baseline, baseline_name, common)
        if champion is not None:
            champion_metrics = run_eval(champion, "champion", common)
    decision = decide(
        challenger_metrics,
        champion_metrics,
        baseline_metrics,
        primary=primary,
        margin=margin,
        margin_mode=margin_mode,
        champion_version=champion_version,
        model_name=model_name,
    )
    decision.window_rows = {"total": window.height, "common": common.height}
    logger.info("decision: %s (%s)", "promote" if decision.promote else "keep", decision.reason)

    active = mlflow.active_run()
    # a run of our own ends FAILED if anything below raises
    with mlflow.start_run() if active is None else contextlib.nullcontext(active) as run:
        if decision.promote or register_rejected:
            # with the optimizer state: the next retraining fine-tunes it with "carry"
            kwargs = {"with_optimizer": True, **dict(log_kwargs or {})}
            info = log_pyfunc_model(challenger, registered_model_name=model_name, **kwargs)
            decision.challenger_version = str(info.registered_model_version)
            version = decision.challenger_version
            client.set_model_version_tag(
                model_name, version, "decision", "promoted" if decision.promote else "rejected"
            )
            client.set_model_version_tag(model_name, version, "decision.reason", decision.reason)
            client.set_model_version_tag(model_name, version, "decision.run_id", run.info.run_id)
        _log_decision(decision, artifact_file)
        if decision.promote:
            # The very last step: until here the registry's champion is untouched.
            client.set_registered_model_alias(model_name, alias, decision.challenger_version)
            logger.info(
                "%s@%s -> version %s (was %s)",
                model_name,
                alias,
                decision.challenger_version,
                champion_version,
            )
    return decision
