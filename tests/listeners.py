"""The TCP listeners of a process and its children (psutil, the dev extra): servers and jobs
the README starts must listen on loopback only."""

from __future__ import annotations


def listeners(pid: int) -> set[tuple[str, int]]:
    """``(ip, port)`` of every listening TCP socket of process ``pid`` and its descendants."""
    import psutil

    found: set[tuple[str, int]] = set()
    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return found
    for process in family:
        try:
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def assert_loopback_only(pid: int) -> None:
    """At least one listener, all on 127.0.0.1 / ::1."""
    found = listeners(pid)
    assert found, f"process {pid} listens nowhere"
    assert {ip for ip, _ in found} <= {"127.0.0.1", "::1"}, found
