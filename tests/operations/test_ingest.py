"""Incoming-file manifest: exactly-once across scans, duplicates under new names, quarantine of
corrupt files, crash between scan and commit, atomic manifest, and the run lock (held by another
process, freed when that process is killed)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recsys_pipeline.datasets.base import RawDataError
from recsys_pipeline.operations.ingest import (
    IngestReport,
    ManifestError,
    RetrainLockedError,
    RunLock,
    commit,
    file_sha256,
    read_manifest,
    scan_incoming,
)


def validate(path: Path) -> None:
    """A stand-in for the dataset reader: a file is valid if its text starts with a header."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if not data.startswith(b"session,item,time\n"):
        raise RawDataError(f"{path.name}: bad header {data[:20]!r}")


def csv(rows: int, offset: int = 0) -> bytes:
    lines = ["session,item,time"] + [f"{i},{i + offset},{i}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "incoming").mkdir()
    return tmp_path


def drop(root: Path, name: str, content: bytes) -> Path:
    path = root / "incoming" / name
    path.write_bytes(content)
    return path


def scan(root: Path) -> IngestReport:
    return scan_incoming(root / "incoming", root / "manifest.json", validate)


def test_each_content_is_processed_exactly_once_across_scans(root: Path) -> None:
    drop(root, "day1.csv", csv(3))
    drop(root, "day2.csv.gz", gzip.compress(csv(4, 10)))
    first = scan(root)
    assert [f.name for f in first.new] == ["day1.csv", "day2.csv.gz"]
    assert first.new[0].sha256 == file_sha256(root / "incoming" / "day1.csv")
    assert first.new[0].size == len(csv(3))
    commit(first)
    entries = read_manifest(root / "manifest.json")
    assert [(e.name, e.status) for e in entries] == [
        ("day1.csv", "ingested"),
        ("day2.csv.gz", "ingested"),
    ]
    assert all(e.time and e.size > 0 and len(e.sha256) == 64 for e in entries)

    drop(root, "day3.csv", csv(5, 20))
    second = scan(root)
    assert [f.name for f in second.new] == ["day3.csv"]
    assert sorted(s.file.name for s in second.skipped) == ["day1.csv", "day2.csv.gz"]
    commit(second)
    commit(second)  # idempotent
    third = scan(root)
    assert third.new == [] and len(third.skipped) == 3 and third.quarantined == []
    assert len(read_manifest(root / "manifest.json")) == 3


def test_same_content_under_another_name_is_skipped(root: Path) -> None:
    drop(root, "a.csv", csv(3))
    commit(scan(root))
    drop(root, "a-copy.csv", csv(3))
    report = scan(root)
    assert report.new == []
    skipped = {s.file.name: s for s in report.skipped}
    assert "already ingested as 'a.csv'" in skipped["a-copy.csv"].reason
    # two new files with one content in the same scan: the first by name is new
    drop(root, "x2.csv", csv(7))
    drop(root, "x1.csv", csv(7))
    report = scan(root)
    assert [f.name for f in report.new] == ["x1.csv"]
    assert (
        "same content as 'x1.csv' in this scan"
        in {s.file.name: s for s in report.skipped}["x2.csv"].reason
    )


def test_corrupt_file_is_quarantined_with_a_report_and_the_others_proceed(root: Path) -> None:
    drop(root, "good1.csv", csv(3))
    bad = drop(root, "bad.csv", b"garbage\x00\x01")
    drop(root, "good2.csv", csv(4, 5))
    checksum = file_sha256(bad)
    report = scan(root)
    assert [f.name for f in report.new] == ["good1.csv", "good2.csv"]
    assert len(report.quarantined) == 1
    item = report.quarantined[0]
    assert item.moved_to == root / "quarantine" / "bad.csv" and item.moved_to.exists()
    assert not bad.exists()
    details = json.loads((root / "quarantine" / "bad.csv.report.json").read_text())
    assert details["sha256"] == checksum and details["error_type"] == "RawDataError"
    assert "bad header" in details["error"]
    entries = read_manifest(root / "manifest.json")  # recorded at once, unlike the good ones
    assert [(e.name, e.status) for e in entries] == [("bad.csv", "quarantined")]
    assert "bad header" in entries[0].reason
    commit(report)
    statuses = {e.name: e.status for e in read_manifest(root / "manifest.json")}
    assert statuses == {"bad.csv": "quarantined", "good1.csv": "ingested", "good2.csv": "ingested"}
    # the same bad content dropped again is skipped; other bad content with the same name is
    # quarantined next to the first without overwriting it
    drop(root, "bad.csv", b"garbage\x00\x01")
    skipped = {s.file.name: s.reason for s in scan(root).skipped}
    assert "content already quarantined as 'bad.csv'" in skipped["bad.csv"]
    (root / "incoming" / "bad.csv").unlink()
    drop(root, "bad.csv", b"other garbage")
    again = scan(root)
    assert again.quarantined[0].moved_to.name.endswith("-bad.csv")
    assert (root / "quarantine" / "bad.csv").read_bytes() == b"garbage\x00\x01"


def test_unexpected_errors_can_propagate_instead_of_quarantining(root: Path) -> None:
    drop(root, "a.csv", csv(3))

    def broken(path: Path) -> None:
        raise KeyError("a bug in the reader")

    with pytest.raises(KeyError):
        scan_incoming(root / "incoming", root / "manifest.json", broken, errors=(RawDataError,))
    assert (root / "incoming" / "a.csv").exists()


def test_crash_between_scan_and_commit_offers_the_files_again(root: Path) -> None:
    drop(root, "a.csv", csv(3))
    drop(root, "b.csv", csv(4, 1))
    first = scan(root)
    assert len(first.new) == 2
    # ... the run crashes while processing: no commit
    second = scan(root)
    assert [f.name for f in second.new] == ["a.csv", "b.csv"]
    assert [f.sha256 for f in second.new] == [f.sha256 for f in first.new]
    commit(second)
    assert scan(root).new == []


def test_manifest_is_written_atomically_and_never_silently_replaced(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop(root, "a.csv", csv(3))
    commit(scan(root))
    manifest = root / "manifest.json"
    before = manifest.read_text()
    drop(root, "b.csv", csv(4, 1))
    report = scan(root)

    def failing_replace(src, dst) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        commit(report)
    monkeypatch.undo()
    assert manifest.read_text() == before  # the old manifest is intact
    assert [p.name for p in root.iterdir() if p.name.startswith(".manifest")] == []
    manifest.write_text("{not json")
    with pytest.raises(ManifestError, match="not a readable ingest manifest"):
        scan(root)


def test_hidden_files_and_folders_are_ignored(root: Path) -> None:
    drop(root, ".upload.csv.part", b"half")
    (root / "incoming" / "sub").mkdir()
    drop(root, "a.csv", csv(2))
    report = scan_incoming(root / "incoming", root / "incoming" / "manifest.json", validate)
    assert [f.name for f in report.new] == ["a.csv"]
    commit(report)
    assert scan_incoming(root / "incoming", root / "incoming" / "manifest.json", validate).new == []


# ------------------------------------------------------------------------------------- lock

HOLDER = textwrap.dedent(
    """
    import sys, time
    from recsys_pipeline.operations.ingest import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
    """
)


def test_lock_refuses_a_second_holder_and_is_free_after_the_holder_dies(tmp_path: Path) -> None:
    lock = tmp_path / "retrain.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RetrainLockedError, match=rf"\(pid {holder.pid}\)") as info:
            with RunLock(lock):
                pytest.fail("entered a held lock")
        assert info.value.pid == holder.pid and info.value.since
        assert f"another retrain run holds {lock} since" in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    with RunLock(lock) as held:  # the kernel released the dead holder's lock
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(RetrainLockedError):  # also exclusive within one process
            with RunLock(lock):
                pass
    assert held._fd is None
    with RunLock(lock):  # released on exit
        pass
