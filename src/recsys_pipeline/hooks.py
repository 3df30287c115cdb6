"""Project hooks: a lock so that two ``retrain`` runs never overlap."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from recsys_pipeline.operations.ingest import RunLock

logger = logging.getLogger(__name__)

LOCK_FILE = Path("data") / ".retrain.lock"


class RetrainLockHook:
    """Holds ``data/.retrain.lock`` (``fcntl.flock``) while a run of the ``retrain`` pipeline
    lasts; a second run at the same time fails at once with ``RetrainLockedError`` naming the
    holder's pid and start time. The lock dies with its process, so a killed run frees it."""

    def __init__(self) -> None:
        self._lock: RunLock | None = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name")]
        if "retrain" not in (names or []):
            return
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        lock = RunLock(LOCK_FILE)
        lock.__enter__()  # raises RetrainLockedError when another run holds it
        self._lock = lock

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._release()
