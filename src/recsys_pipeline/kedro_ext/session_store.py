"""A Kedro session store that never gives two runs of one project the same session id.

Kedro's session id is the run's start time to the millisecond, and it is also the save version
of every versioned dataset the run writes. Tuning workers started together in one project folder
(``for i in 1 2 3 4; do kedro run --pipelines=tune ... & done``) can start in the same
millisecond; the second one to save then fails with "... must not exist if versioning is
enabled" after all its trials. This store reserves the id when Kedro records it: an id already
taken by another run of the project moves on by one millisecond, until a free one is found.

Reservations are empty files ``<project>/sessions/ids/<id>`` (created with ``O_EXCL``, which is
atomic on a local disk and on NFSv3+); those older than a day are removed as new ones are made.
Nothing else about Kedro's (ephemeral) session store changes.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kedro.framework.session.store import BaseSessionStore
from kedro.io.core import VERSION_FORMAT

KEEP_SECONDS = 86_400
MAX_TRIES = 10_000


def _format(stamp: datetime) -> str:
    text = stamp.strftime(VERSION_FORMAT)
    return text[:-4] + text[-1:]  # milliseconds, as kedro.io.core.generate_timestamp


def reserve_session_id(folder: Path, session_id: str) -> str:
    """``session_id`` if no other run of the project has it, else the next free millisecond.

    An id that is not one of Kedro's timestamps (a caller's own) is returned unchanged.
    """
    try:
        stamp = datetime.strptime(session_id, VERSION_FORMAT)
    except (TypeError, ValueError):
        return session_id
    folder.mkdir(parents=True, exist_ok=True)
    candidate = session_id
    for _ in range(MAX_TRIES):
        try:
            os.close(os.open(folder / candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            stamp += timedelta(milliseconds=1)
            candidate = _format(stamp)
            continue
        _prune(folder)
        return candidate
    raise RuntimeError(f"no free session id after {session_id} in {folder}")


def _prune(folder: Path) -> None:
    cutoff = time.time() - KEEP_SECONDS
    for entry in os.scandir(folder):
        try:
            if entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
        except FileNotFoundError:  # another run pruned it first
            pass


class UniqueSessionStore(BaseSessionStore):
    """Kedro's ephemeral ``BaseSessionStore`` whose ``session_id`` is unique in the project
    (``SESSION_STORE_CLASS`` in settings.py; ``path`` is Kedro's ``<project>/sessions``)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "session_id" and value != self.data.get("session_id"):
            value = reserve_session_id(Path(self._path) / "ids", value)
        super().__setitem__(key, value)
