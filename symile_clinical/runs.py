"""Open a training run directory (docs/formats.md): its config and a checkpoint's model."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from models import SymileModel, build_model
from symile_clinical.checkpoint import CheckpointError, file_sha256, load_checkpoint
from symile_clinical.config import ConfigError, TrainConfig, config_from_dict

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"


@dataclass
class LoadedRun:
    """A trained model ready to embed (eval mode) with the config that made it."""

    model: SymileModel
    config: TrainConfig
    objective: str
    run_dir: Path
    checkpoint_path: Path
    checkpoint_sha256: str
    data_dir: Path | None = None


def read_run_config(run_dir: Path | str) -> tuple[TrainConfig, Path | None]:
    """RUN/config.json -> (TrainConfig, dataset path recorded under "data" or None)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(str(path), "missing: not a training run directory") from error
    except json.JSONDecodeError as error:
        raise ConfigError(str(path), f"invalid JSON: {error}") from error
    data = values.get("data")
    return config_from_dict(values, source=str(path)), Path(data) if data else None


def checkpoint_file(run_dir: Path | str, checkpoint: str | Path = "best") -> Path:
    """ "best" / "last" -> RUN/checkpoints/<name>.pt; anything else is taken as a path.

    "best" falls back to last.pt (with a warning) when no epoch has finished validation.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    if str(checkpoint) in ("best", "last"):
        path = folder / f"{checkpoint}.pt"
        if str(checkpoint) == "best" and not path.exists() and (folder / "last.pt").exists():
            log.warning("%s has no best.pt yet; using last.pt", run_dir)
            return folder / "last.pt"
        return path
    return Path(checkpoint)


def load_run(
    run_dir: Path | str, checkpoint: str | Path = "best", device: str | torch.device = "cpu"
) -> LoadedRun:
    """Load RUN's config and a checkpoint's weights into a SymileModel in eval mode."""
    run_dir = Path(run_dir)
    config, data_dir = read_run_config(run_dir)
    path = checkpoint_file(run_dir, checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    model = build_model(config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(path, f"weights do not fit config.json's model: {error}") from error
    model.to(device).eval()
    return LoadedRun(
        model=model,
        config=config,
        objective=config.objective,
        run_dir=run_dir,
        checkpoint_path=path,
        checkpoint_sha256=file_sha256(path),
        data_dir=data_dir,
    )
