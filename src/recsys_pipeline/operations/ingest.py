"""Exactly-once intake of new raw files for scheduled retraining (no Kedro here).

A scheduled run looks at an *incoming* folder where new raw files are dropped (any name: ``.csv``,
``.gz``, ...) and must process every file's content exactly once, even when the same content
arrives again under another name, when a file is corrupt, or when a run crashes half-way::

    with RunLock(root / "retrain.lock"):                 # one run at a time
        report = scan_incoming(root / "incoming", root / "manifest.json", validate=check)
        process([f.path for f in report.new])            # e.g. fine-tune on them
        commit(report)                                   # only now are they "ingested"

* Files are identified by the SHA-256 of their content. The JSON manifest (``manifest_path``,
  always written atomically: temporary name in the same folder, fsync, rename) holds one entry
  per processed content: name, size, sha256, status (``ingested`` | ``quarantined``), time (UTC,
  ISO 8601) and reason. A file whose checksum is in the manifest is skipped (whatever its name);
  so is a second file with the content of another new file of the same scan.
* ``validate(path)`` is called on every new file (the pipeline passes a function that reads it
  with the dataset's reader and raises :class:`~recsys_pipeline.datasets.base.RawDataError`). A
  file that fails is moved to ``incoming_dir/../quarantine/`` with ``<name>.report.json`` next to
  it (error, checksum) and recorded as ``quarantined`` at once; the other files go on. The same
  content dropped again later is skipped as already quarantined (remove its manifest entry to
  retry it, e.g. after fixing the reader).
* Valid new files are returned in :attr:`IngestReport.new` but recorded as ``ingested`` only by
  :func:`commit`, after the caller has processed them: a crash in between offers them again
  next time (at-least-once processing, exactly-once recording); they are never lost. Ingested
  files stay in the incoming folder (they are skipped by checksum from then on).
* Hidden files (name starting with ``.``: uploads in progress by convention) and the manifest
  itself are ignored; sub-folders are not scanned.
* :class:`RunLock`: ``fcntl.flock`` on a lock file, non-blocking; a second run gets
  :class:`RetrainLockedError` naming the holder. The kernel releases the lock when the holder
  exits or dies, so a crashed run never leaves a stale lock behind (POSIX only; on NFS flock may
  be local to one machine).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from recsys_pipeline.storage import jsonio
from recsys_pipeline.storage.partial import partial_suffix

logger = logging.getLogger(__name__)

__all__ = [
    "IncomingFile",
    "IngestReport",
    "ManifestEntry",
    "ManifestError",
    "QuarantinedFile",
    "RetrainLockedError",
    "RunLock",
    "SkippedFile",
    "commit",
    "file_sha256",
    "pending",
    "read_manifest",
    "scan_incoming",
]

MANIFEST_VERSION = 1
QUARANTINE_DIR = "quarantine"
_CHUNK = 1 << 20

Status = Literal["ingested", "quarantined"]


class ManifestError(ValueError):
    """The manifest exists but cannot be read as one (it is never silently replaced)."""


class RetrainLockedError(RuntimeError):
    """Another run holds the retraining lock."""

    def __init__(self, path: Path, pid: int | None, since: str | None) -> None:
        self.path, self.pid, self.since = path, pid, since
        super().__init__(
            f"another retrain run holds {path} since {since or 'an unknown time'} "
            f"(pid {pid if pid is not None else 'unknown'})"
        )


# ------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class IncomingFile:
    """A file found in the incoming folder: where it is, its size in bytes and checksum."""

    path: Path
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ManifestEntry:
    """One processed content in the manifest."""

    name: str
    size: int
    sha256: str
    status: Status
    time: str  # UTC, ISO 8601
    reason: str = ""
    batch: str = ""  # ingested files: the key of the batch they were processed in

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ManifestEntry:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})


@dataclass(frozen=True)
class SkippedFile:
    """A file not processed because its content was seen before (``previous``)."""

    file: IncomingFile
    previous: ManifestEntry | IncomingFile  # the manifest entry, or a new file of this scan
    reason: str


@dataclass(frozen=True)
class QuarantinedFile:
    """A file that failed validation: its original record, new location and report."""

    file: IncomingFile
    moved_to: Path
    report_path: Path
    reason: str


@dataclass
class IngestReport:
    """What :func:`scan_incoming` found; pass it to :func:`commit` once ``new`` is processed.

    Attributes:
        manifest_path: the manifest this scan read and :func:`commit` writes.
        new: valid new files, in name order, to be processed (not yet in the manifest).
        skipped: files whose content was already processed (or is another new file's).
        quarantined: files that failed validation (moved, reported, already in the manifest).
        ingested_batches: the batch keys of the files committed before, in manifest order
            (data a caller stored per batch is valid only for these keys).
    """

    manifest_path: Path
    new: list[IncomingFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    quarantined: list[QuarantinedFile] = field(default_factory=list)
    ingested_batches: list[str] = field(default_factory=list)

    @property
    def batch(self) -> str:
        """The key of this scan's new files as one batch: ``batch-`` and 16 hex digits of the
        SHA-256 of their sorted checksums. The same files give the same key, so data a caller
        stores under it before :func:`commit` is overwritten, not duplicated, by a retry."""
        digest = hashlib.sha256("".join(sorted(f.sha256 for f in self.new)).encode())
        return f"batch-{digest.hexdigest()[:16]}"

    def summary(self) -> str:
        return (
            f"{len(self.new)} new, {len(self.skipped)} skipped, {len(self.quarantined)} quarantined"
        )


# ------------------------------------------------------------------------------ manifest


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(manifest_path: str | Path) -> list[ManifestEntry]:
    """The manifest's entries (``[]`` when the file does not exist).

    Raises:
        ManifestError: the file is not a manifest (invalid JSON or structure).
    """
    path = Path(manifest_path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        return [ManifestEntry.from_dict(entry) for entry in data["files"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ManifestError(
            f"{path} is not a readable ingest manifest ({err}); fix or move it away "
            "(a missing manifest re-ingests every incoming file)"
        ) from err


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary sibling, fsync it, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{partial_suffix()}")
    try:
        with tmp.open("w") as handle:
            jsonio.dump(data, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_manifest(path: Path, entries: Iterable[ManifestEntry]) -> None:
    _write_json_atomic(
        path, {"version": MANIFEST_VERSION, "files": [asdict(entry) for entry in entries]}
    )


def _append_to_manifest(path: Path, new_entries: list[ManifestEntry]) -> None:
    """Add ``new_entries`` to the manifest on disk (re-read now; known checksums are kept)."""
    if not new_entries:
        return
    entries = read_manifest(path)
    known = {entry.sha256 for entry in entries}
    entries += [entry for entry in new_entries if entry.sha256 not in known]
    _write_manifest(path, entries)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ scan / commit


def scan_incoming(
    incoming_dir: str | Path,
    manifest_path: str | Path,
    validate: Callable[[Path], None],
    *,
    errors: tuple[type[Exception], ...] = (Exception,),
) -> IngestReport:
    """Find the files of ``incoming_dir`` whose content is new, validate and sort them.

    Args:
        incoming_dir: the folder new raw files are dropped into (not scanned recursively).
        manifest_path: the JSON manifest of processed contents.
        validate: raises on a file that cannot be used (e.g. the dataset reader's
            ``RawDataError``); its return value is ignored.
        errors: the exceptions of ``validate`` that quarantine a file (default: any
            ``Exception``: a file our reader cannot read is unusable whatever the error);
            others propagate.

    Returns:
        The report: ``new`` files to process then :func:`commit`, ``skipped`` and
        ``quarantined`` ones (the latter already moved and recorded).

    Raises:
        FileNotFoundError: ``incoming_dir`` does not exist.
        ManifestError: the manifest is unreadable.
    """
    incoming = Path(incoming_dir)
    manifest = Path(manifest_path)
    if not incoming.is_dir():
        raise FileNotFoundError(f"incoming folder not found: {incoming}")
    entries = read_manifest(manifest)
    known = {entry.sha256: entry for entry in entries}
    batches = [e.batch for e in entries if e.status == "ingested" and e.batch]
    report = IngestReport(manifest_path=manifest, ingested_batches=list(dict.fromkeys(batches)))
    seen: dict[str, IncomingFile] = {}
    quarantined_entries: list[ManifestEntry] = []
    for path in _candidates(incoming, manifest):
        file = IncomingFile(path=path, size=path.stat().st_size, sha256=file_sha256(path))
        if file.sha256 in known:
            previous = known[file.sha256]
            reason = f"content already {previous.status} as {previous.name!r} on {previous.time}"
            report.skipped.append(SkippedFile(file, previous, reason))
            logger.info("skipping %s: %s", path.name, reason)
            continue
        if file.sha256 in seen:
            reason = f"same content as {seen[file.sha256].name!r} in this scan"
            report.skipped.append(SkippedFile(file, seen[file.sha256], reason))
            logger.info("skipping %s: %s", path.name, reason)
            continue
        seen[file.sha256] = file
        try:
            validate(path)
        except errors as err:
            item = _quarantine(file, err)
            report.quarantined.append(item)
            quarantined_entries.append(
                ManifestEntry(file.name, file.size, file.sha256, "quarantined", _now(), item.reason)
            )
            continue
        report.new.append(file)
    _append_to_manifest(manifest, quarantined_entries)
    logger.info("incoming %s: %s", incoming, report.summary())
    return report


def _candidates(incoming: Path, manifest: Path) -> list[Path]:
    """The files of ``incoming`` a scan looks at, in name order (not hidden, not the manifest)."""
    ignored = manifest.resolve()
    return [
        path
        for path in sorted(incoming.iterdir(), key=lambda p: p.name)
        if not path.name.startswith(".") and path.is_file() and path.resolve() != ignored
    ]


def pending(incoming_dir: str | Path, manifest_path: str | Path) -> list[Path]:
    """The files a :func:`scan_incoming` would look at whose content the manifest does not
    know (``[]`` when the folder does not exist): is there anything to retrain on? Corrupt
    files count too (the scan quarantines them). Reads and hashes the files; writes nothing."""
    incoming = Path(incoming_dir)
    if not incoming.is_dir():
        return []
    known = {entry.sha256 for entry in read_manifest(manifest_path)}
    return [p for p in _candidates(incoming, Path(manifest_path)) if file_sha256(p) not in known]


def _quarantine(file: IncomingFile, err: Exception) -> QuarantinedFile:
    """Move ``file`` to ``<incoming>/../quarantine/`` and write ``<name>.report.json`` there."""
    folder = file.path.parent.parent / QUARANTINE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file.name
    if target.exists() or target.with_name(f"{target.name}.report.json").exists():
        target = folder / f"{file.sha256[:12]}-{file.name}"  # another content, same name
    reason = f"{type(err).__name__}: {err}"
    report_path = target.with_name(f"{target.name}.report.json")
    _write_json_atomic(
        report_path,
        {
            "file": file.name,
            "original_path": str(file.path),
            "size": file.size,
            "sha256": file.sha256,
            "error_type": type(err).__name__,
            "error": str(err),
            "time": _now(),
        },
    )
    try:
        os.replace(file.path, target)
    except OSError as move_err:  # another file system: copy, then remove
        if move_err.errno != errno.EXDEV:
            raise
        shutil.move(file.path, target)
    logger.warning("quarantined %s -> %s: %s", file.name, target, reason)
    return QuarantinedFile(file, target, report_path, reason)


def commit(report: IngestReport, files: Iterable[IncomingFile] | None = None) -> None:
    """Record ``files`` (default: all of ``report.new``) as ``ingested`` in the manifest.

    Call it only after the files were processed successfully. Idempotent: checksums already
    in the manifest are not added twice. Each entry records ``report.batch``.
    """
    chosen = report.new if files is None else list(files)
    now = _now()
    batch = report.batch
    entries = [ManifestEntry(f.name, f.size, f.sha256, "ingested", now, "", batch) for f in chosen]
    _append_to_manifest(report.manifest_path, entries)
    logger.info("manifest %s: %d file(s) ingested", report.manifest_path, len(entries))


# ------------------------------------------------------------------------------ lock


class RunLock:
    """Non-blocking exclusive lock (``fcntl.flock``) on ``path`` for one retraining run.

    The lock file (created if needed, never deleted: deleting a flock file races with a
    newcomer) holds the holder's pid, host and start time for the error message. The lock is
    released on exit, and by the kernel when the holder's process dies.

    Raises (on entry):
        RetrainLockedError: another process (or another :class:`RunLock` in this process)
            holds it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> Self:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RetrainLockedError(self.path, holder.get("pid"), holder.get("since")) from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        logger.info("acquired retrain lock %s (pid %d)", self.path, os.getpid())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no stale holder information
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        logger.info("released retrain lock %s", self.path)


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder information written in the lock file (``{}`` if not written yet)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}
