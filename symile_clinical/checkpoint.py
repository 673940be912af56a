"""Checkpoint files: atomic writes that keep the previous one, typed errors on bad files.

A checkpoint is a dict of tensors and plain Python values, so it loads with
torch.load(weights_only=True): no pickled code runs when a checkpoint is opened.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from symile_clinical.atomic import atomic_path
from symile_clinical.errors import SymileClinicalError

CHECKPOINT_FORMAT = 1


class CheckpointError(SymileClinicalError):
    """A checkpoint that cannot be used (missing, truncated, corrupt, wrong content)."""


def previous_path(path: Path) -> Path:
    """Where the checkpoint that `path` replaced is kept: last.pt -> last.prev.pt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path | str, state: dict[str, Any], keep_previous: bool = True) -> Path:
    """Write `state` to `path` atomically; the file it replaces stays as previous_path(path).

    The new file is written and fsynced under a temporary name, the current file is
    hard-linked (or copied) to the previous name, and only then renamed over: at every
    moment `path` is a complete checkpoint, old or new.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with tmp.open("wb") as handle:
            torch.save(state, handle)
        if keep_previous and path.exists():
            with atomic_path(previous_path(path)) as previous_tmp:
                try:
                    os.link(path, previous_tmp)
                except OSError:  # file systems without hard links
                    shutil.copy2(path, previous_tmp)
    return path


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with weights_only=True; CheckpointError if it is not usable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            path, f"truncated or corrupt ({type(error).__name__}: {error})"
        ) from error
    except pickle.UnpicklingError as error:
        raise CheckpointError(path, f"not loadable with weights_only=True: {error}") from error
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(path, "not a symile-clinical checkpoint (no 'model' entry)")
    version = state.get("format", CHECKPOINT_FORMAT)
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(path, f"checkpoint format {version}, expected {CHECKPOINT_FORMAT}")
    return state


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
