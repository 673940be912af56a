"""The audit trail: one JSON line per view of the served run, appended, never rewritten.

File: DIR/audit.jsonl (DIR = RUN/audit, or `--audit-dir`). Each line is one JSON object
(schema in docs/formats.md#audit-trail):

    {"schema": 1, "time": "2025-01-31T09:15:02.123Z", "user": "a.b@hospital.org",
     "session": "…", "run": "symile", "event": "view", "page": "by_admission",
     "admission": {"subject_id": 10000032, "hadm_id": 22595853}, "upload": null,
     "candidates": {"Symile": ["dicom-…", …], "CLIP": […]}}

Ids only: never lab values, signals or pixels. A line is written with one write(2) on a
file opened O_APPEND, so concurrent sessions never interleave within a line. When the
file would pass ROTATE_BYTES it is renamed audit-<UTC time>.jsonl (kept, never deleted)
and a new one started. A write that fails raises AuditWriteError: the page shows it and
stops rather than show what it could not record.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.web.errors import AppError

log = logging.getLogger(__name__)

SCHEMA = 1
AUDIT_FILE = "audit.jsonl"
ROTATE_BYTES = 10 * 1024 * 1024


class AuditWriteError(AppError):
    """A view could not be recorded: `path` is the audit file, `reason` the OS's reason."""


def utc_now() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def audit_record(
    user: str,
    run: str,
    page: str,
    event: str = "view",
    session: str | None = None,
    admission: Mapping[str, int] | None = None,
    upload: Mapping[str, Any] | None = None,
    candidates: Mapping[str, Sequence[str]] | None = None,
    time: str | None = None,
) -> dict[str, Any]:
    """One audit line's object (the module docstring's schema); ids only."""
    return {
        "schema": SCHEMA,
        "time": time or utc_now(),
        "user": user,
        "session": session,
        "run": run,
        "event": event,
        "page": page,
        "admission": dict(admission) if admission is not None else None,
        "upload": dict(upload) if upload is not None else None,
        "candidates": {k: [str(c) for c in v] for k, v in (candidates or {}).items()},
    }


class AuditLog:
    """The append-only audit file of one served run, rotated by size."""

    def __init__(self, folder: Path, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.folder = Path(folder)
        self.path = self.folder / AUDIT_FILE
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line, in one write; AuditWriteError when it fails."""
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._append(line)
            except OSError as error:
                log.error("audit trail %s not written: %s", self.path, error)
                raise AuditWriteError(self.path, error.strerror or str(error)) from error

    def _append(self, line: bytes) -> None:
        """Write `line` at the end of the file, rotating it first when it would pass
        rotate_bytes; an exclusive flock keeps other processes' rotations out."""
        fd = self._open_locked()
        try:
            size = os.fstat(fd).st_size
            if size and size + len(line) > self.rotate_bytes:
                self._rotate()
                os.close(fd)
                fd = self._open_locked()
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"short write: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open_locked(self) -> int:
        """The current file opened O_APPEND under an exclusive flock (reopened when another
        process rotated it while this one waited for the lock)."""
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _rotate(self) -> None:
        """Rename the full file audit-<UTC time>[-N].jsonl (never overwriting one)."""
        stamp = utc_now().replace(":", "").replace("-", "").replace(".", "")
        target = self.folder / f"audit-{stamp}.jsonl"
        n = 1
        while target.exists():
            target = self.folder / f"audit-{stamp}-{n}.jsonl"
            n += 1
        os.rename(self.path, target)
        log.info("audit trail rotated to %s", target.name)

    def files(self) -> list[Path]:
        """Every audit file, oldest first (rotated ones, then the current one)."""
        rotated = sorted(self.folder.glob("audit-*.jsonl"))
        return [*rotated, *([self.path] if self.path.exists() else [])]


def read_audit(folder: Path) -> list[dict[str, Any]]:
    """Every record of an audit folder, oldest first."""
    return [
        json.loads(line)
        for path in AuditLog(folder).files()
        for line in path.read_text().splitlines()
        if line.strip()
    ]


_logs: dict[str, AuditLog] = {}
_logs_lock = threading.Lock()


def audit_log(folder: Path) -> AuditLog:
    """The process's one AuditLog of a folder (its lock shared by every session)."""
    key = str(Path(folder).resolve())
    with _logs_lock:
        if key not in _logs:
            _logs[key] = AuditLog(Path(key))
        return _logs[key]
