"""The training recipes: the presets, TOML recipe files, and the model fitted to the data.
The schema they fill (TrainConfig, Augmentation, config.json) is
symile_clinical/formats/run_config.py's.

Presets: `demo` (Symile's recipe for a CPU), `demo-clip` (CLIP's), both chosen on validation
by benchmarks/recipe_search.py; `demo-gram`, `demo-triangle`, `demo-gated-symile` (the same
size, started from `demo`, their initial scale chosen on validation by the same search);
`paper` (the reference's Symile-MIMIC regime, for a GPU); `search-base` (where the recipe
search starts).

A config file is TOML with TrainConfig's fields at the top level, ModelConfig's in a
[model] table and Augmentation's in an [augmentation] table (older recipes' flat
`augment_<amount>` keys read the same); `preset = "demo"` (or "paper") starts from a preset
and overrides it:

    preset = "demo"
    epochs = 5
    [model]
    embed_dim = 128
    [augmentation]
    lab_noise = 0.1
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from models import ModelConfig
from symile_clinical.formats.run_config import (
    Augmentation,
    ConfigError,
    TrainConfig,
    config_from_dict,
)

if TYPE_CHECKING:
    from symile_clinical.formats.dataset_dir import SplitArrays

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "PRESETS",
    "demo_clip_config",
    "demo_config",
    "demo_gated_symile_config",
    "demo_gram_config",
    "demo_triangle_config",
    "fit_model_to_data",
    "load_config",
    "paper_config",
    "search_base_config",
]


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
_AUGMENTATION = Augmentation(ecg_shift=500, ecg_gain=0.1, cxr_shift=4)


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
    return dataclasses.replace(
        base, model=model, negatives="conditional", augmentation=_AUGMENTATION
    )


def demo_clip_config() -> TrainConfig:
    """Pairwise CLIP's recipe for the demo and the study, chosen on validation: the demo's
    encoders, L2-normalised embeddings with CLIP's scale (as CLIP is trained) and the same
    augmentation as Symile (on validation it lowered CLIP at F = 0 and raised it at F = 0.5
    and 1, higher on the mean)."""
    return dataclasses.replace(_demo_sized("demo-clip", "clip"), augmentation=_AUGMENTATION)


def _demo_on_unit_vectors(preset: str, objective: str, logit_scale_init: float) -> TrainConfig:
    """`demo`'s encoders, epochs and augmentation with L2-normalised embeddings. GRAM,
    TRIANGLE and Gated Symile normalise every vector inside their scores, so demo's LayerNorm
    offset (a shared component that starts every vector nearly parallel) would start every
    volume, area and gated MIP alike; unit vectors start them apart, as for CLIP."""
    base = demo_config()
    model = dataclasses.replace(
        base.model, projection="l2", projection_offset=0.0, logit_scale_init=logit_scale_init
    )
    return dataclasses.replace(base, model=model, preset=preset, objective=objective)


def demo_gram_config() -> TrainConfig:
    """GRAM's recipe for the demo and the study, chosen on validation (docs/study.md): demo's
    encoders, epochs and augmentation, unit vectors, initial scale 50 (of 5, 14.3 = CLIP's,
    50 and 100: volumes lie in [0, 1], and the paper's 1/0.07 was 3 points lower) and the
    data-anchor matching head of 256 hidden units."""
    return _demo_on_unit_vectors("demo-gram", "gram", math.log(50.0))


def demo_triangle_config() -> TrainConfig:
    """TRIANGLE's recipe for the demo and the study, chosen on validation (docs/study.md):
    demo's encoders, epochs and augmentation, unit vectors and initial scale 100, the clamp
    (of 5, 14.3 = CLIP's, 50 and 100; areas lie in [0, 3 sqrt(3) / 4])."""
    return _demo_on_unit_vectors("demo-triangle", "triangle", math.log(100.0))


def demo_gated_symile_config() -> TrainConfig:
    """Gated Symile's recipe for the demo and the study, chosen on validation (docs/study.md):
    demo's encoders, epochs and augmentation, unit vectors, initial scale 0.3 (of 0.1, 0.3,
    1 and 3; the paper's d^((M-1)/2) scaling already spreads the gated MIP of unrelated rows
    to unit variance) and a gate of key width 64."""
    return _demo_on_unit_vectors("demo-gated-symile", "gated-symile", math.log(0.3))


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
    "demo-gram": demo_gram_config,
    "demo-triangle": demo_triangle_config,
    "demo-gated-symile": demo_gated_symile_config,
    "paper": paper_config,
    "search-base": search_base_config,
}


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
