"""Atomic writes: a file or folder appears complete under its name, or not at all.

Everything the project writes goes through `atomic_path` (a file) or `atomic_directory` (a
folder): the content is written under a hidden temporary sibling name, flushed to disk, and
renamed over the target, so a reader (or a run killed half-way) never sees a partial file.
Torch-free, so that preprocessing's worker processes can use it too.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _sibling(path: Path, kind: str) -> Path:
    """A hidden, unique, not-yet-existing name beside `path`."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success it replaces `path`.

    The temporary name is hidden (".name.tmp-PID-XXXX") and unique per writer, so two
    processes writing the same target never share one; it does not exist yet (the writer
    creates it, with the usual permissions), so write through a handle or a full file name
    (np.save would append ".npy" to a bare name). On an exception it is removed and `path`
    is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf as None, numpy scalars and arrays as Python values, recursively:
    what strict JSON can hold."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | os.PathLike[str], value: Any, indent: int | None = 2) -> Path:
    """Write `value` as strict JSON atomically: keys in the order given, NaN as null (see
    `json_safe`), other non-JSON values (paths, dates) as str."""
    text = json.dumps(json_safe(value), indent=indent, default=str, allow_nan=False)
    return write_text_atomic(path, text + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike[str], replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it becomes `path`.

    With `replace`, an existing `path` is moved aside first and removed after the swap;
    without it, a `path` that appeared meanwhile (another process committed it first) wins
    and this folder is discarded. On an exception the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(path, "tmp")
    staging.mkdir()
    try:
        yield staging
        old = None
        if path.exists():
            if not replace:
                return
            old = _sibling(path, "old")
            os.replace(path, old)
        try:
            os.replace(staging, path)
        except OSError:
            if path.exists() and not replace:  # another process committed first
                return
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete the temporary files and folders a killed writer left in `folder` (the hidden
    ".name.tmp-PID-XXXX" siblings of this module); returns how many. Call it only when no
    other writer is at work there (a resumed run that owns its output)."""
    removed = 0
    for stale in Path(folder).glob(".*.tmp-*-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed += 1
    return removed
