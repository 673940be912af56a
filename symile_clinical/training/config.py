"""Typed training configuration: ModelConfig + TrainConfig, the presets, TOML.

Presets: `demo` (Symile's recipe for a CPU), `demo-clip` (CLIP's), both chosen on validation
by benchmarks/recipe_search.py; `paper` (the reference's Symile-MIMIC regime, for a GPU);
`search-base` (where the recipe search starts).

A config file is TOML with TrainConfig's fields at the top level and ModelConfig's in a
[model] table; `preset = "demo"` (or "paper") starts from a preset and overrides it:

    preset = "demo"
    epochs = 5
    [model]
    embed_dim = 128
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import ModelConfig
from symile_clinical.errors import SymileClinicalError

if TYPE_CHECKING:
    from symile_clinical.formats.dataset_dir import SplitArrays

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

OBJECTIVES = ("symile", "clip")
NEGATIVES = ("n", "n_squared", "conditional")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")

__all__ = [
    "DEVICES",
    "NEGATIVES",
    "OBJECTIVES",
    "PRECISIONS",
    "PRESETS",
    "ConfigError",
    "ModelConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "demo_clip_config",
    "demo_config",
    "load_config",
    "paper_config",
    "search_base_config",
]


class ConfigError(SymileClinicalError):
    """A configuration that cannot be used; `path` names its source (file, preset or field)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; serialised into RUN/config.json.

    `batch_size` is the global batch (split evenly over data-parallel ranks);
    `checkpoint_every` is in optimiser steps (0: only at each epoch's end);
    `warmup_steps` of linear warm-up, then cosine decay to `min_lr_ratio * lr`;
    `lab_dropout`: probability of marking each observed lab missing during training;
    `augment_*`: training-time ECG roll (samples), ECG per-lead log gain, CXR translation
    (pixels), ECG, CXR and lab noise (standard deviations), CXR log gain; see
    symile_clinical/training/augment.py (0: off);
    `patience`: epochs without a better val accuracy before stopping (0: never stop early);
    `max_steps`: stop after this many optimiser steps in total (None: all epochs);
    `cxr_weights`: a local torchvision-style ResNet state dict for the CXR backbone;
    `encoder_weights`: a local state dict or run checkpoint whose encoder weights start the
    encoders it holds (models/weights.py); both only start a new run, never a resumed one;
    `precision` "auto" is bf16 autocast on CUDA and fp32 on CPU; `channels_last` None is
    "on CUDA".
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
    augment_ecg_shift: int = 0
    augment_ecg_gain: float = 0.0
    augment_cxr_shift: int = 0
    augment_ecg_noise: float = 0.0
    augment_cxr_noise: float = 0.0
    augment_cxr_gain: float = 0.0
    augment_lab_noise: float = 0.0
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
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}"),
            (self.negatives in NEGATIVES, f"negatives must be one of {NEGATIVES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (contrastive learning)"),
            (self.lr > 0, "lr must be > 0"),
            (0.0 <= self.lab_dropout < 1.0, "lab_dropout must be in [0, 1)"),
            (
                min(getattr(self, name) for name in vars(self) if name.startswith("augment_")) >= 0,
                "augment_* amounts must be >= 0",
            ),
            (
                all(
                    isinstance(v, int) and not isinstance(v, bool)
                    for v in (self.augment_ecg_shift, self.augment_cxr_shift)
                ),
                "augment_ecg_shift and augment_cxr_shift are whole numbers (samples, pixels)",
            ),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (len(self.betas) == 2, "betas must have two values"),
        ]
        for ok, reason in checks:
            if not ok:
                raise ValueError(reason)


def search_base_config() -> TrainConfig:
    """Where the recipe search starts (benchmarks/recipe_search.py, docs/diagnosis.md): the
    project's first demo recipe, once shared by both objectives. Small encoders and 64-px
    CXRs, L2-normalised embeddings with CLIP's initial scale (exp(2.65926) = 14.3), "n"
    negatives, 8 epochs."""
    model = ModelConfig(
        embed_dim=128,
        projection="l2",
        ecg_channels=(16, 32, 64, 128),
        ecg_blocks=(1, 1, 1, 1),
        ecg_stem_stride=4,
        norm="batch",
        labs_hidden=(128, 128),
        cxr_arch="resnet10",
        cxr_size=64,
    )
    return TrainConfig(
        model=model,
        preset="search-base",
        epochs=8,
        batch_size=64,
        lr=1e-3,
        weight_decay=0.01,
        warmup_steps=20,
        patience=3,
        checkpoint_every=50,
        log_every=5,
        num_workers=0,
    )


# ECG roll up to 1 s (500 samples at 500 Hz), per-lead gain +-10%, CXR shift up to 4 px.
_AUGMENTATION = {"augment_ecg_shift": 500, "augment_ecg_gain": 0.1, "augment_cxr_shift": 4}


def _demo_sized(preset: str, objective: str) -> TrainConfig:
    """The search base with the demo's encoders (ECG stem stride 8 and 8-64 channels, CXR
    resnet_tiny: about 4x less compute per step than the base) and 16 epochs."""
    base = search_base_config()
    model = dataclasses.replace(
        base.model, ecg_channels=(8, 16, 32, 64), ecg_stem_stride=8, cxr_arch="resnet_tiny"
    )
    return dataclasses.replace(
        base, model=model, preset=preset, objective=objective, epochs=16, patience=0
    )


def demo_config() -> TrainConfig:
    """Symile's recipe for the demo and the study, chosen on validation (docs/diagnosis.md):

    - LayerNorm projection whose offset starts at 1, log scale ln 0.1. With offsets the MIP
      of (1 + e)(1 + l)(1 + c) holds CLIP's pairwise terms e.c + l.c from the first step,
      beside the three-way term; without them the labs embedding collapses (L2) or carries
      little (LayerNorm at 0), and Symile ignores the labs.
    - "conditional" negatives: each (ECG, labs) query against the batch's CXRs and back,
      the negatives retrieval meets (symile_clinical/objective/losses.py).
    - augmentation (ECG roll up to 1 s, per-lead gain +-10%, CXR shift up to 4 px): Symile
      memorises 872 admissions within a few epochs without it.
    """
    base = _demo_sized("demo", "symile")
    model = dataclasses.replace(
        base.model, projection="layernorm", projection_offset=1.0, logit_scale_init=math.log(0.1)
    )
    return dataclasses.replace(base, model=model, negatives="conditional", **_AUGMENTATION)


def demo_clip_config() -> TrainConfig:
    """Pairwise CLIP's recipe for the demo and the study, chosen on validation: the demo's
    encoders, L2-normalised embeddings with CLIP's scale (as CLIP is trained) and the same
    augmentation as Symile (on validation it lowered CLIP at F = 0 and raised it at F = 0.5
    and 1, higher on the mean)."""
    return dataclasses.replace(_demo_sized("demo-clip", "clip"), **_AUGMENTATION)


def paper_config() -> TrainConfig:
    """The paper's Symile-MIMIC regime for a GPU: ResNet-18-like ECG, ResNet-50 CXR at 320 px,
    d = 8192 with LayerNorm, AdamW (weight decay 0.01), batch 280, 80 epochs, "n_squared"
    negatives (the reference's Symile-MIMIC run).

    The log logit scale starts at -7, the value of the reference's Symile-MIMIC run: MIPs of
    LayerNorm'd 8192-d vectors are in the hundreds, so CLIP's 2.65926 (right for unit
    vectors) would start the softmax fully saturated.
    """
    model = ModelConfig(
        embed_dim=8192,
        projection="layernorm",
        logit_scale_init=-7.0,
        ecg_channels=(64, 128, 256, 512),
        ecg_blocks=(2, 2, 2, 2),
        norm="batch",
        labs_hidden=(256, 1024),
        cxr_arch="resnet50",
        cxr_size=320,
    )
    return TrainConfig(
        model=model,
        preset="paper",
        negatives="n_squared",
        epochs=80,
        batch_size=280,
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=500,
        patience=10,
        checkpoint_every=1000,
        log_every=20,
        eval_batch_size=280,
        num_workers=8,
    )


PRESETS = {
    "demo": demo_config,
    "demo-clip": demo_clip_config,
    "paper": paper_config,
    "search-base": search_base_config,
}


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _checked_fields(cls: type, values: dict[str, Any], source: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(source, f"unknown {cls.__name__} field(s): {', '.join(unknown)}")


def config_from_dict(
    values: dict[str, Any], source: str = "config", base: TrainConfig | None = None
) -> TrainConfig:
    """TrainConfig from a dict (config.json or TOML), over `base` (default: TrainConfig()).

    Keys outside TrainConfig are refused, except "data" (the dataset path config.json keeps
    beside the config) and "preset" handled by the caller.
    """
    values = {key: value for key, value in values.items() if key != "data"}
    model_values = values.pop("model", {}) or {}
    base = base or TrainConfig()
    _checked_fields(TrainConfig, values, source)
    _checked_fields(ModelConfig, model_values, source)
    try:
        model = dataclasses.replace(base.model, **model_values)
        return dataclasses.replace(base, model=model, **values)
    except (TypeError, ValueError) as error:
        raise ConfigError(source, str(error)) from error


def load_config(name_or_path: str | Path) -> TrainConfig:
    """A preset name ("demo", "paper") or a TOML file (optionally `preset = ...` + overrides)."""
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]()
    path = Path(name_or_path)
    try:
        with path.open("rb") as handle:
            values = tomllib.load(handle)
    except FileNotFoundError as error:
        raise ConfigError(
            text, f"neither a preset ({', '.join(PRESETS)}) nor an existing TOML file"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(text, f"invalid TOML: {error}") from error
    preset = values.get("preset", "custom")
    if preset != "custom" and preset not in PRESETS:
        raise ConfigError(text, f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    base = PRESETS[preset]() if preset in PRESETS else TrainConfig()
    return config_from_dict(values, source=text, base=base)


def fit_model_to_data(config: TrainConfig, train: SplitArrays) -> TrainConfig:
    """The model's input shapes (labs, leads, samples) come from the dataset, not the preset."""
    model = dataclasses.replace(
        config.model,
        n_labs=train.n_labs,
        ecg_leads=int(train.ecg.shape[1]),
        ecg_samples=int(train.ecg.shape[2]),
    )
    return dataclasses.replace(config, model=model)
