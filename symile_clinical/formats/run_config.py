"""The run-config schema: TrainConfig (with its nested Augmentation and the model's
ModelConfig), its dict form and RUN/config.json (docs/formats.md).

config.json holds TrainConfig's fields at the top level, ModelConfig's under "model", the
augmentation amounts under "augmentation", and "data" (the run's dataset, an absolute path).
Older runs and recipes spell each augmentation amount as a flat `augment_<amount>` key
(`augment_ecg_shift`, ...); both spellings read the same (`config_from_dict`). The presets
and TOML recipes are symile_clinical/training/config.py's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import ModelConfig
from symile_clinical.errors import SymileClinicalError
from symile_clinical.formats.atomic import write_json_atomic

# Every training objective: its loss is the trainer's, its retrieval score objective/scores.py's.
OBJECTIVES = ("symile", "clip", "gram", "triangle", "gated-symile")
# The heads an objective adds to the model (ModelConfig field -> its size when the config
# leaves it 0): Gated Symile's gate (key width) and GRAM's data-anchor matching head (hidden
# width). Every other objective's model has neither.
OBJECTIVE_HEADS: dict[str, dict[str, int]] = {
    "gated-symile": {"gate_dim": 64},
    "gram": {"matching_hidden": 256},
}
HEAD_FIELDS = ("gate_dim", "matching_hidden")
NEGATIVES = ("n", "n_squared", "conditional")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
# config.json's key for the dataset path, kept beside the config's own fields.
DATASET_KEY = "data"
# The older spelling of an augmentation amount: "augment_<amount>" at the top level.
FLAT_AUGMENT_PREFIX = "augment_"

__all__ = [
    "DATASET_KEY",
    "DEVICES",
    "NEGATIVES",
    "OBJECTIVES",
    "OBJECTIVE_HEADS",
    "PRECISIONS",
    "Augmentation",
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "read_config_json",
    "write_config_json",
]


class ConfigError(SymileClinicalError):
    """A configuration that cannot be used; `path` names its source (file, preset or field)."""


@dataclass(frozen=True)
class Augmentation:
    """Training-time perturbation amounts (symile_clinical/training/augment.py); all zero
    (the default) is no augmentation. Shifts are whole numbers, every amount is >= 0."""

    ecg_shift: int = 0  # samples
    ecg_gain: float = 0.0  # log amplitude
    cxr_shift: int = 0  # pixels
    ecg_noise: float = 0.0  # standard deviation, ECG units (peak 1)
    cxr_noise: float = 0.0  # standard deviation, pixel units in [0, 1]
    cxr_gain: float = 0.0  # log intensity
    lab_noise: float = 0.0  # standard deviation, percentile units

    def __post_init__(self) -> None:
        shifts = (self.ecg_shift, self.cxr_shift)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in shifts):
            raise ValueError(
                "augmentation ecg_shift and cxr_shift are whole numbers (samples, pixels), "
                f"got {self}"
            )
        if min(dataclasses.astuple(self)) < 0:
            raise ValueError(f"augmentation amounts must be >= 0, got {self}")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return any(dataclasses.astuple(self))

    @property
    def noise_enabled(self) -> bool:
        """Whether a noise kind is on (they draw on the batch's device)."""
        return any((self.ecg_noise, self.cxr_noise, self.cxr_gain, self.lab_noise))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; serialised into RUN/config.json.

    `batch_size` is the global batch (split evenly over data-parallel ranks);
    `checkpoint_every` is in optimiser steps (0: only at each epoch's end);
    `warmup_steps` of linear warm-up, then cosine decay to `min_lr_ratio * lr`;
    `lab_dropout`: probability of marking each observed lab missing during training;
    `augmentation`: training-time ECG roll (samples), ECG per-lead log gain, CXR translation
    (pixels), ECG, CXR and lab noise (standard deviations), CXR log gain (Augmentation);
    `patience`: epochs without a better val accuracy before stopping (0: never stop early);
    `max_steps`: stop after this many optimiser steps in total (None: all epochs);
    `cxr_weights`: a local torchvision-style ResNet state dict for the CXR backbone;
    `encoder_weights`: a local state dict or run checkpoint whose encoder weights start the
    encoders it holds (models/weights.py); both only start a new run, never a resumed one;
    `precision` "auto" is bf16 autocast on CUDA and fp32 on CPU; `channels_last` None is
    "on CUDA".
    The model's heads follow `objective` (OBJECTIVE_HEADS): a head the objective needs gets
    its default size when the model config leaves it 0, a head it does not need is 0, so
    that replacing the objective of a recipe gives a model that trains it.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    preset: str = "custom"
    objective: str = "symile"
    negatives: str = "n"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    lab_dropout: float = 0.0
    augmentation: Augmentation = field(default_factory=Augmentation)
    patience: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    max_steps: int | None = None
    eval_batch_size: int = 128
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    cxr_weights: str | None = None
    encoder_weights: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.objective in OBJECTIVES and isinstance(self.model, ModelConfig):
            object.__setattr__(self, "model", _heads_for(self.objective, self.model))
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}"),
            (self.negatives in NEGATIVES, f"negatives must be one of {NEGATIVES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (contrastive learning)"),
            (self.lr > 0, "lr must be > 0"),
            (0.0 <= self.lab_dropout < 1.0, "lab_dropout must be in [0, 1)"),
            (isinstance(self.augmentation, Augmentation), "augmentation must be an Augmentation"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (len(self.betas) == 2, "betas must have two values"),
        ]
        for ok, reason in checks:
            if not ok:
                raise ValueError(reason)


def _heads_for(objective: str, model: ModelConfig) -> ModelConfig:
    """`model` with the heads `objective` needs (OBJECTIVE_HEADS) and no other."""
    needed = OBJECTIVE_HEADS.get(objective, {})
    sizes = {
        name: (getattr(model, name) or needed[name]) if name in needed else 0
        for name in HEAD_FIELDS
    }
    if all(getattr(model, name) == size for name, size in sizes.items()):
        return model
    return dataclasses.replace(model, **sizes)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists; model and augmentation nested)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _checked_fields(cls: type, values: dict[str, Any], source: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(source, f"unknown {cls.__name__} field(s): {', '.join(unknown)}")


def _augmentation_values(values: dict[str, Any], source: str) -> dict[str, Any]:
    """The augmentation amounts of a dict, nested ("augmentation") or flat ("augment_*"),
    removed from `values`; ConfigError when one amount is given both ways."""
    nested = dict(values.pop("augmentation", None) or {})
    amounts = {f.name for f in dataclasses.fields(Augmentation)}
    flat_keys = [
        key
        for key in values
        if key.startswith(FLAT_AUGMENT_PREFIX) and key.removeprefix(FLAT_AUGMENT_PREFIX) in amounts
    ]
    for key in flat_keys:
        amount = key.removeprefix(FLAT_AUGMENT_PREFIX)
        if amount in nested:
            raise ConfigError(source, f"{key} and augmentation.{amount} both given")
        nested[amount] = values.pop(key)
    return nested


def config_from_dict(
    values: dict[str, Any], source: str = "config", base: TrainConfig | None = None
) -> TrainConfig:
    """TrainConfig from a dict (config.json or TOML), over `base` (default: TrainConfig()).

    "model" and "augmentation" override base's field by field; flat `augment_<amount>` keys
    are the augmentation amounts too. Keys outside TrainConfig are refused, except "data"
    (the dataset path config.json keeps beside the config).
    """
    values = {key: value for key, value in values.items() if key != DATASET_KEY}
    model_values = values.pop("model", {}) or {}
    augmentation_values = _augmentation_values(values, source)
    base = base or TrainConfig()
    _checked_fields(TrainConfig, values, source)
    _checked_fields(ModelConfig, model_values, source)
    _checked_fields(Augmentation, augmentation_values, source)
    try:
        model = dataclasses.replace(base.model, **model_values)
        augmentation = dataclasses.replace(base.augmentation, **augmentation_values)
        return dataclasses.replace(base, model=model, augmentation=augmentation, **values)
    except (TypeError, ValueError) as error:
        raise ConfigError(source, str(error)) from error


def read_config_json(path: Path) -> dict[str, Any]:
    """RUN/config.json's raw values (the config's and "data"); ConfigError naming the file
    when it is missing, not JSON or not an object."""
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise ConfigError(str(path), "missing: not a training run directory") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(str(path), f"invalid JSON: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(str(path), "not a JSON object")
    return values


def write_config_json(path: Path, config: TrainConfig, dataset: Path) -> Path:
    """Write RUN/config.json atomically: the config plus the dataset's path ("data")."""
    return write_json_atomic(path, {**config_to_dict(config), DATASET_KEY: str(dataset)})
