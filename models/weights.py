"""Local weights files: read safely, and start a model's encoders from one.

Nothing is downloaded: a weights file is a path on this machine. It is read with
`torch.load(weights_only=True)`, so a file that would need pickled code to load is refused
rather than run.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

ENCODERS = ("ecg_encoder", "labs_encoder", "cxr_encoder")


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model (path, reason)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The dict a local weights file holds (tensors and plain values only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's own message advises weights_only=False, i.e. running the file's code.
        raise WeightsError(
            path, "not a state dict of tensors (refused: it would need pickled code to load)"
        ) from error
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise WeightsError(path, f"cannot read state dict: {error}") from error
    if not isinstance(state, dict):
        raise WeightsError(path, f"expected a state dict, found {type(state).__name__}")
    return state


def load_encoder_weights(model: nn.Module, path: Path) -> tuple[str, ...]:
    """Start each encoder the file holds (keys `ecg_encoder.*`, `labs_encoder.*`,
    `cxr_encoder.*`) from its weights, whole and shape for shape; the rest of the model keeps
    its initialisation. The file is a state dict, or a training checkpoint with one under
    "model" (a run's best.pt). Returns the encoders loaded."""
    state = read_state_dict(path)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    loaded = []
    for name in ENCODERS:
        part = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
        if not part:
            continue
        try:
            getattr(model, name).load_state_dict(part, strict=True)
        except (AttributeError, RuntimeError) as error:
            # torch's first line only names the module; the mismatches follow it.
            detail = " ".join(line.strip() for line in str(error).strip().splitlines())
            raise WeightsError(path, f"{name} does not match the model: {detail}") from error
        loaded.append(name)
    if not loaded:
        raise WeightsError(path, f"holds no encoder weights (keys starting {', '.join(ENCODERS)})")
    return tuple(loaded)
