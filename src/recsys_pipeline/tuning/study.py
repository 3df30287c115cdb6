"""Optuna studies on an RDB storage: resumable, shared by many workers, with pruning.

The reference (``paropt.py``) runs one in-memory Optuna study per loss and embedding mode, each
trial training on ``train_tr`` and scoring MRR@20 on ``train_valid``. Here the study lives in an
RDB storage (a SQLite file by default, PostgreSQL for many machines), so that

* a killed run continues where it stopped: ``n_trials`` is the number of *finished* trials the
  study should hold (complete or pruned), and a worker only runs what is missing;
* a trial whose worker died is marked failed and retried once with the same parameters
  whenever the study is resumed, also when the study already holds ``n_trials`` finished
  trials: at once when the worker ran on this host and its process is gone, otherwise once
  it has had no heartbeat for ``grace_period`` seconds (Optuna's heartbeat,
  ``fail_stale_trials`` and ``RetryHeartbeatStaleTrialCallback``);
* any number of workers on any machines share one study: Optuna's RDB storage hands out the
  trials, no scheduler of our own;
* a study remembers its space, fixed parameters and metric (user attributes): opening it with
  different ones is an error before any training.

Every epoch reports the validation metric (``trial.report``) and a configurable pruner (median by
default, ``none`` possible) may stop the trial early.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from recsys_pipeline.storage.partial import process_gone
from recsys_pipeline.tuning.space import ParamSpec

__all__ = [
    "FINISHED",
    "PRUNERS",
    "StudySettings",
    "TuningError",
    "check_signature",
    "enqueue_defaults",
    "finished_trials",
    "make_pruner",
    "open_study",
    "optimize",
    "recover_dead_trials",
    "redact_url",
    "trials_table",
    "worker_id",
]

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "none")


class TuningError(RuntimeError):
    """A tuning setting or storage problem, raised before any training starts."""


@dataclass
class StudySettings:
    """Where the study lives and how it searches.

    Attributes:
        storage: SQLAlchemy URL of the Optuna RDB (``sqlite:///...``, ``postgresql+psycopg://...``).
        study_name: the study's name in the storage.
        direction: ``maximize`` (Recall/MRR) or ``minimize``.
        pruner: one of :data:`PRUNERS` and its keyword arguments.
        sampler_seed: TPE sampler seed; ``None`` (default) differs per worker, so that parallel
            workers do not propose the same points. Set it only for single-worker runs.
        heartbeat_interval / grace_period: seconds; a running trial without heartbeat for
            ``grace_period`` is failed and retried (``max_retry`` times).
    """

    storage: str
    study_name: str
    direction: str = "maximize"
    pruner: str = "median"
    pruner_args: dict[str, Any] = field(default_factory=dict)
    sampler_seed: int | None = None
    n_startup_trials: int = 10
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 1


def redact_url(url: str) -> str:
    """``url`` with any password hidden (for messages and logs)."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL: show nothing secret
        return url.rsplit("@", maxsplit=1)[-1]


def make_pruner(name: str, args: dict[str, Any] | None = None) -> optuna.pruners.BasePruner:
    """The pruner ``name`` (:data:`PRUNERS`) with keyword ``args``."""
    args = dict(args or {})
    classes = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "none": optuna.pruners.NopPruner,
    }
    if name not in classes:
        raise TuningError(f"unknown pruner {name!r}; choose one of {PRUNERS}")
    try:
        return classes[name](**args)
    except TypeError as err:
        raise TuningError(f"pruner {name!r}: bad arguments {args}: {err}") from err


# PostgreSQL SQLSTATEs of a lost schema-creation race: duplicate_object (e.g. the type of
# ``alembic_version``), duplicate_table, unique_violation.
_SCHEMA_RACE_SQLSTATES = {"42710", "42P07", "23505"}


def _schema_race(err: BaseException | None) -> bool:
    """Did another worker create the same schema object first?"""
    if isinstance(err, sqlalchemy.exc.IntegrityError):
        return True
    if isinstance(err, sqlalchemy.exc.ProgrammingError):
        return getattr(err.orig, "sqlstate", None) in _SCHEMA_RACE_SQLSTATES
    return False


def _storage(settings: StudySettings, attempts: int = 5) -> RDBStorage:
    """The RDB storage; workers starting together race to create the schema (an
    ``IntegrityError``, or on PostgreSQL a duplicate-object ``ProgrammingError``, for the
    loser): retried a few times."""
    for attempt in range(1, attempts + 1):
        try:
            return _connect(settings)
        except TuningError as err:
            if not _schema_race(err.__cause__) or attempt == attempts:
                raise
            logger.info("storage schema created concurrently by another worker; retrying")
            time.sleep(0.2 * attempt + random.random() * 0.3)
    raise AssertionError("unreachable")


def _connect(settings: StudySettings) -> RDBStorage:
    url = settings.storage
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=settings.max_retry
                ),
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, OSError) as err:
        raise TuningError(
            f"cannot open the Optuna storage {redact_url(url)}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def check_signature(study: optuna.Study, signature: dict[str, Any]) -> None:
    """Record ``signature`` (space, fixed parameters, metric) in a new study, or check that an
    existing study was created with the same one.

    Raises:
        TuningError: the study was created with another signature (lists what differs).
    """
    stored = study.user_attrs.get("signature")
    wanted = json.loads(json.dumps(signature, sort_keys=True, default=str))
    if stored is None:
        if any(t.state in FINISHED for t in study.get_trials(deepcopy=False)):
            raise TuningError(
                f"study {study.study_name!r} has trials but no recorded space: it was not "
                "created by this pipeline; use another tune.study_name"
            )
        study.set_user_attr("signature", wanted)
        return
    if stored != wanted:
        diffs = [
            f"{key}: study has {stored.get(key)!r}, this run {wanted.get(key)!r}"
            for key in sorted(set(stored) | set(wanted))
            if stored.get(key) != wanted.get(key)
        ]
        raise TuningError(
            f"study {study.study_name!r} was created with another setup; "
            + "; ".join(diffs)
            + ". Use another tune.study_name (or delete the study) to search a new space."
        )


def open_study(settings: StudySettings, signature: dict[str, Any]) -> optuna.Study:
    """Create or load the study, checking the storage and the signature first."""
    storage = _storage(settings)
    sampler = optuna.samplers.TPESampler(
        seed=settings.sampler_seed, n_startup_trials=settings.n_startup_trials
    )
    try:
        study = _create_or_load(storage, settings, sampler)
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as err:
        raise TuningError(
            f"cannot use the Optuna storage {redact_url(settings.storage)}: "
            f"{type(err).__name__}: {str(err).splitlines()[0]}"
        ) from err
    if study.direction.name.lower() != settings.direction:
        raise TuningError(
            f"study {settings.study_name!r} optimises {study.direction.name.lower()}, "
            f"this run asks {settings.direction}"
        )
    check_signature(study, signature)
    return study


def _create_or_load(
    storage: RDBStorage, settings: StudySettings, sampler: optuna.samplers.BaseSampler
) -> optuna.Study:
    """``create_study(load_if_exists=True)``, retried when another worker created the same
    study at the same moment."""
    for attempt in range(1, 6):
        try:
            return optuna.create_study(
                storage=storage,
                study_name=settings.study_name,
                direction=settings.direction,
                sampler=sampler,
                pruner=make_pruner(settings.pruner, settings.pruner_args),
                load_if_exists=True,
            )
        except sqlalchemy.exc.IntegrityError:
            if attempt == 5:
                raise
            time.sleep(0.2 * attempt + random.random() * 0.3)
    raise AssertionError("unreachable")


def enqueue_defaults(
    study: optuna.Study, specs: list[ParamSpec], base: dict[str, Any]
) -> dict[str, Any] | None:
    """Queue the fixed configuration ``base`` as the first trial of a new study, so that the
    search never ends below its starting point (values outside the space are left to the
    sampler). Returns what was queued, or ``None`` when the study has trials already."""
    if study.get_trials(deepcopy=False):
        return None
    values: dict[str, Any] = {}
    for spec in specs:
        value = base.get(spec.name)
        if isinstance(value, list) and len(value) == 1:  # layers: [100] -> 100
            value = value[0]
        if value is None:
            continue
        if spec.dtype == "categorical":
            if value in (spec.choices or ()):
                values[spec.name] = value
        elif isinstance(value, int | float) and spec.low <= value <= spec.high:
            values[spec.name] = value
    study.enqueue_trial(values, skip_if_exists=True)
    logger.info("queued the fixed parameters as trial 0: %s", values)
    return values


def finished_trials(study: optuna.Study) -> int:
    """Number of complete or pruned trials."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def worker_id() -> str:
    """``host:pid`` of this process (a trial's ``worker`` user attribute)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail every running trial whose worker is dead and queue its retry (same parameters,
    up to ``max_retry`` times, by the storage's ``RetryHeartbeatStaleTrialCallback``):

    * a worker on this host whose process no longer exists (a rerun right after a kill);
    * any worker without a heartbeat for ``grace_period`` seconds (other hosts too).

    Returns the numbers of the trials failed here.
    """
    storage = study._storage  # noqa: SLF001 - Optuna has no public accessor of a study's storage
    failed_ids: list[int] = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or not process_gone(int(pid)):
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):  # noqa: SLF001
                failed_ids.append(trial._trial_id)  # noqa: SLF001
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            pass
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    numbers = []
    for trial_id in failed_ids:
        failed = storage.get_trial(trial_id)
        numbers.append(failed.number)
        if callback is not None:
            callback(study, failed)
    stale_before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    numbers += [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.number not in stale_before
    ]
    for number in numbers:
        logger.warning(
            "trial %d of study %r: its worker died; marked failed and queued again",
            number,
            study.study_name,
        )
    return sorted(numbers)


def _waiting(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    *,
    timeout: float | None = None,
) -> int:
    """Run trials until the study holds ``n_trials`` finished ones (counting those of earlier
    runs and of other workers) and no queued trial waits; returns how many this call ran.

    Trials of dead workers are failed and retried first (:func:`recover_dead_trials`), also
    when the study has ``n_trials`` finished trials already: a retry is never lost. Several
    workers may overshoot by up to one trial each (each checks the count before it starts its
    last trial); no trial runs twice. Every trial records its ``worker`` (:func:`worker_id`).
    """

    def tracked(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        return objective(trial)

    recover_dead_trials(study)
    if finished_trials(study) >= n_trials and not _waiting(study):
        logger.info(
            "study %r already has %d finished trials", study.study_name, finished_trials(study)
        )
        return 0
    started = time.perf_counter()
    mine = failed = 0
    while True:
        if finished_trials(study) >= n_trials and not _waiting(study):
            break
        if failed > n_trials:
            raise TuningError(f"{failed} trials failed in this run (diverged?): giving up")
        if timeout is not None and time.perf_counter() - started > timeout:
            logger.info("tuning timeout reached after %d trials", mine)
            break
        before_states = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        study.optimize(tracked, n_trials=1, gc_after_trial=True, catch=())
        mine += 1
        failed += len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) > before_states
    logger.info(
        "study %r: %d trials run here, %d finished in total",
        study.study_name,
        mine,
        finished_trials(study),
    )
    return mine


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, duration, parameters (as JSON), worker."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "duration_s": duration,
                "epochs_reported": len(t.intermediate_values),
                "params": json.dumps(t.params, sort_keys=True),
                "worker": t.user_attrs.get("worker"),
                "retry_of": t.system_attrs.get("failed_trial"),
            }
        )
    return rows


def space_signature(specs: list[ParamSpec]) -> list[dict[str, Any]]:
    """The space as plain data (for the study's signature)."""
    return [s.to_dict() for s in specs]
