"""Checkpoint files: atomic writes that keep the previous one, typed errors on bad files.

A checkpoint is a dict of tensors and plain Python values, so it loads with
torch.load(weights_only=True): no pickled code runs when a checkpoint is opened.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from symile_clinical.errors import SymileClinicalError
from symile_clinical.formats.atomic import atomic_path

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
            path, f"truncated or corrupt ({type(error).__name__}: {_first_line(error)})"
        ) from None
    except pickle.UnpicklingError as error:
        raise CheckpointError(path, _unpickling_reason(error)) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(path, "not a symile-clinical checkpoint (no 'model' entry)")
    version = state.get("format", CHECKPOINT_FORMAT)
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(path, f"checkpoint format {version}, expected {CHECKPOINT_FORMAT}")
    return state


def _first_line(error: Exception) -> str:
    """The first line of a torch error, without its advice to load with weights_only=False."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if "weights_only" not in text else "not loadable as plain tensors and values"


def _unpickling_reason(error: Exception) -> str:
    """Why weights_only=True refused the file, naming the class it holds; no advice to run
    pickled code (torch's message suggests weights_only=False: never, for a checkpoint)."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    held = f" ({match.group(1)})" if match else ""
    return (
        f"holds a Python object{held} other than tensors and plain values, which "
        "torch.load(weights_only=True) refuses (opening it could run code): not a "
        "symile-clinical checkpoint"
    )


def check_model_shapes(path: Path | str, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """CheckpointError naming `path` when its weights do not fit `model` (another shape)."""
    expected = model.state_dict()
    saved = state.get("model", {})
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = [
        f"{name} {tuple(saved[name].shape)} (model {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in saved and hasattr(saved[name], "shape") and saved[name].shape != tensor.shape
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} weights of another shape, e.g. {wrong[0]}")
    if missing:
        problems.append(f"{len(missing)} weights missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} weights the model lacks, e.g. {unexpected[0]}")
    if problems:
        raise CheckpointError(
            path,
            "was written for another model shape: "
            + "; ".join(problems)
            + " (resume with the config it was trained with, or start a new run)",
        )


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance_path(weights: Path | str) -> Path:
    """WEIGHTS.json: what a pretrained-encoders file learnt from, beside it."""
    return Path(weights).with_suffix(".json")


def read_provenance(weights: Path | str | None) -> dict[str, Any] | None:
    """The provenance of an encoders file (None: no file given, or none recorded beside it)."""
    import json

    if not weights:
        return None
    path = provenance_path(weights)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
