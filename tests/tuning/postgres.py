"""A throw-away PostgreSQL server on loopback for the distributed-tuning test.

Uses the server binaries on this machine (``initdb``/``pg_ctl`` on PATH or under
``/usr/lib/postgresql/<version>/bin``); as root the server runs as the ``postgres`` user (the
server refuses to run as root). ``.ci/run`` installs Debian's ``postgresql`` when it is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or ``None``."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "pg_ctl").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def why_unavailable() -> str | None:
    """A reason to skip, or ``None`` when a server can be started."""
    if server_bin_dir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) on this machine"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server(database: str = "optuna") -> Iterator[str]:
    """Start a private cluster on ``127.0.0.1:<free port>``; yields the SQLAlchemy URL."""
    bindir = server_bin_dir()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    port = _free_port()

    def call(*args: str) -> None:
        out = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if out.returncode:
            logged = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {out.stdout}{out.stderr}{logged}")

    try:
        call(str(bindir / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(data))
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root}"
        call(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        import psycopg

        deadline = time.time() + 30
        while True:
            try:
                with psycopg.connect(
                    f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
                ) as conn:
                    conn.execute(f"CREATE DATABASE {database}")
                break
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)
