"""Names of what a writer leaves while it works: ``<name>.partial-<host>-<pid>``.

Every file or folder that is written first and renamed into place when complete carries this
suffix, so that a later run can tell what a killed process left behind (its host is this one and
its pid is gone) from what a live writer, here or on another host sharing the folder, is
still writing.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

__all__ = ["PARTIAL", "partial_suffix", "prune_empty", "writer_gone"]

#: ``.partial-<host>-<pid>`` (or ``.partial-<pid>`` of older versions: this host) at the end
PARTIAL = re.compile(r"\.partial-(?:(?P<host>.+)-)?(?P<pid>\d+)$")


def partial_suffix() -> str:
    """``.partial-<host>-<pid>`` of this process."""
    return f".partial-{socket.gethostname()}-{os.getpid()}"


def process_gone(pid: int) -> bool:
    """Is no process ``pid`` running on this host?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return pid <= 0


def writer_gone(name: str) -> bool:
    """Was ``name`` left by a process of this host that no longer runs?"""
    match = PARTIAL.search(name)
    if match is None:
        return False
    host = match.group("host")
    return (host is None or host == socket.gethostname()) and process_gone(int(match.group("pid")))


def prune_empty(path: Path, stop: Path) -> None:
    """Remove ``path`` and its parents up to ``stop`` (excluded) while they are empty (what a
    removed file or version folder leaves behind); a part of the chain already gone is
    skipped."""
    path, stop = Path(path).absolute(), Path(stop).absolute()
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return
        path = path.parent
