"""Reading a PyTorch Lightning checkpoint (.ckpt) without running pickled code.

A Lightning checkpoint is a `torch.save` dict: `state_dict` (the module's tensors),
`hyper_parameters` (the arguments the module was built with: often `pathlib` paths and
`argparse.Namespace` objects), `epoch`, `global_step`, `pytorch-lightning_version`, optimiser
and callback states. It is opened with `torch.load(weights_only=True)`, which rebuilds only
tensors and plain containers, plus an explicit allow-list of harmless types
(`ALLOWED_GLOBALS`: value objects whose construction runs no code of the file's choosing).
A pickle that names anything else (a function, a class with side effects, a module of its
own) is refused before any of it is built, with an error naming the file and what it named.
No MIMIC or model knowledge here: callers decide what the state_dict means.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from symile_clinical.errors import SymileClinicalError

# Types a Lightning checkpoint's hyper_parameters hold that are plain values: a Namespace is
# rebuilt from its attribute dict, a path from its string parts.
ALLOWED_GLOBALS: tuple[type, ...] = (
    argparse.Namespace,
    pathlib.Path,
    pathlib.PosixPath,
    pathlib.PurePath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
)
# A checkpoint saved on Windows names pathlib.WindowsPath, which cannot be built on this
# system (NotImplementedError): it is rebuilt as the PureWindowsPath of the same parts.
SUBSTITUTED_GLOBALS: tuple[tuple[type, str], ...] = (
    (pathlib.PureWindowsPath, "pathlib.WindowsPath"),
)


class LightningCheckpointError(SymileClinicalError):
    """A .ckpt that cannot be read safely or is not a Lightning checkpoint."""


@dataclass(frozen=True)
class LightningCheckpoint:
    """What a Lightning checkpoint holds that a model needs.

    `state_dict`: {name: tensor} on CPU; `hyper_parameters`: the saved arguments with paths
    as str and Namespaces as dicts (JSON-able); `epoch`, `global_step`, `lightning_version`
    (None when absent).
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any]
    epoch: int | None
    global_step: int | None
    lightning_version: str | None


def _allowed_names() -> set[str]:
    own = {f"{cls.__module__}.{cls.__qualname__}" for cls in ALLOWED_GLOBALS}
    return own | {name for _, name in SUBSTITUTED_GLOBALS}


def _refusal(path: Path) -> LightningCheckpointError:
    """The error for a pickle that names a global outside the allow-list, naming them."""
    try:
        named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the listing is a courtesy; the refusal stands without it
        named = []
    unexpected = sorted(set(named) - _allowed_names())
    what = ", ".join(unexpected[:10]) if unexpected else "objects outside the allow-list"
    return LightningCheckpointError(
        path,
        f"refused: its pickle would build {what}, which may run code on loading; only "
        "tensors, plain containers and "
        f"{', '.join(sorted(cls.__name__ for cls in set(ALLOWED_GLOBALS)))} are read",
    )


def plain_values(value: Any) -> Any:
    """hyper_parameters made JSON-able: paths -> str, Namespace -> dict, tensors -> lists."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        return {str(key): plain_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_values(item) for item in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def read_lightning_checkpoint(path: str | Path) -> LightningCheckpoint:
    """Load a Lightning .ckpt with weights_only=True and the allow-list; tensors on CPU.

    LightningCheckpointError (naming the file) when it is missing, truncated, refused by the
    allow-list, or has no state_dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise LightningCheckpointError(path, "no such checkpoint file")
    try:
        with torch.serialization.safe_globals([*ALLOWED_GLOBALS, *SUBSTITUTED_GLOBALS]):
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise _refusal(path) from error
    except NotImplementedError as error:  # an allowed type this system cannot build
        raise LightningCheckpointError(
            path, f"its pickle builds an object this system cannot make ({error})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise LightningCheckpointError(
            path, f"truncated or not a torch.save file ({type(error).__name__})"
        ) from error
    if not isinstance(content, dict) or not isinstance(content.get("state_dict"), dict):
        raise LightningCheckpointError(path, "not a Lightning checkpoint (no 'state_dict' dict)")
    state_dict = content["state_dict"]
    bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise LightningCheckpointError(path, f"state_dict entries that are not tensors: {bad[:5]}")
    hyper = content.get("hyper_parameters") or {}
    if not isinstance(hyper, dict | argparse.Namespace):
        raise LightningCheckpointError(path, "hyper_parameters is not a dict")
    epoch, step = content.get("epoch"), content.get("global_step")
    version = content.get("pytorch-lightning_version")
    return LightningCheckpoint(
        path=path,
        state_dict=dict(state_dict),
        hyper_parameters=plain_values(hyper),
        epoch=int(epoch) if isinstance(epoch, int) else None,
        global_step=int(step) if isinstance(step, int) else None,
        lightning_version=str(version) if version is not None else None,
    )
