"""The model that joins the three encoders in one embedding space with a learned logit scale."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.cxr_encoder import CXREncoder
from models.ecg_encoder import ECGEncoder
from models.gating import ModalityGate
from models.labs_encoder import LabsEncoder
from models.matching import MatchingHead
from models.three_modalities import ThreeModalityModel
from models.weights import WeightsError, load_encoder_weights

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # 2.65926, CLIP's initial temperature
PROJECTIONS = ("layernorm", "l2", "none")
# "symile_clinical": this project's SymileModel; "symile_mimic_reference": the published
# Symile-MIMIC architecture (models/reference_mimic.py), shaped by embed_dim, n_labs, cxr_size.
ARCHITECTURES = ("symile_clinical", "symile_mimic_reference")


@dataclass(frozen=True)
class ModelConfig:
    """The model's shape; serialised into RUN/config.json under "model".

    `projection`: "layernorm" (a LayerNorm on each modality's d-vector, as the paper's
    MIMIC model), "l2" (unit vectors, as the paper's README example) or "none" (the
    encoder's linear output as is).
    `norm`: "batch" (BatchNorm in the ECG and CXR ResNets, as torchvision's) or "group"
    (GroupNorm: the output does not depend on the batch, so eval mode behaves as training
    did even after few steps, and data-parallel training equals one process exactly).
    `gate_dim`: width of Gated Symile's gate projections (models/gating.py); 0 = no gate.
    `matching_hidden`: hidden width of GRAM's matching head (models/matching.py); 0 = none.
    Both follow the training objective (formats/run_config.py sets them).
    """

    embed_dim: int = 256
    projection: str = "layernorm"
    ecg_leads: int = 12
    ecg_samples: int = 5000
    ecg_channels: tuple[int, ...] = (64, 128, 256, 512)
    ecg_blocks: tuple[int, ...] = (2, 2, 2, 2)
    ecg_kernel_size: int = 7
    ecg_stem_kernel_size: int = 15
    ecg_stem_stride: int = 2
    ecg_dropout: float = 0.0
    norm: str = "batch"
    n_labs: int = 50
    labs_hidden: tuple[int, ...] = (256, 1024)
    labs_dropout: float = 0.0
    cxr_arch: str = "resnet50"
    cxr_size: int = 320
    logit_scale_init: float = LOGIT_SCALE_INIT
    freeze_logit_scale: bool = False
    projection_offset: float = 0.0
    arch: str = "symile_clinical"
    gate_dim: int = 0
    matching_hidden: int = 0

    def __post_init__(self) -> None:
        if self.gate_dim < 0 or self.matching_hidden < 0:
            raise ValueError(
                f"gate_dim and matching_hidden must be >= 0 (0: none), got {self.gate_dim}, "
                f"{self.matching_hidden}"
            )
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        # Lists from JSON/TOML become tuples so that configs compare and hash by value.
        for name in ("ecg_channels", "ecg_blocks", "labs_hidden"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))


class Projection(nn.Module):
    """The last step of every modality: LayerNorm (learned affine), L2 normalisation or none."""

    def __init__(self, kind: str, dim: int, offset: float = 0.0) -> None:
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(dim) if kind == "layernorm" else nn.Identity()
        if kind == "layernorm":
            nn.init.constant_(self.norm.bias, offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, d]."""
        if self.kind == "l2":
            return F.normalize(x, dim=-1)
        return self.norm(x)


class SymileModel(ThreeModalityModel):
    """ECG, labs and CXR encoders projecting to a shared d, plus a learned log logit scale.

    `logit_scale` is the log of the scale; the losses take `logit_scale.exp()`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.ecg_encoder = ECGEncoder(
            out_dim=d,
            leads=config.ecg_leads,
            samples=config.ecg_samples,
            channels=config.ecg_channels,
            blocks=config.ecg_blocks,
            kernel_size=config.ecg_kernel_size,
            stem_kernel_size=config.ecg_stem_kernel_size,
            stem_stride=config.ecg_stem_stride,
            dropout=config.ecg_dropout,
            norm=config.norm,
        )
        self.labs_encoder = LabsEncoder(
            n_labs=config.n_labs, out_dim=d, hidden=config.labs_hidden, dropout=config.labs_dropout
        )
        self.cxr_encoder = CXREncoder(
            out_dim=d, arch=config.cxr_arch, image_size=config.cxr_size, norm=config.norm
        )
        offset = config.projection_offset
        self.ecg_projection = Projection(config.projection, d, offset)
        self.labs_projection = Projection(config.projection, d, offset)
        self.cxr_projection = Projection(config.projection, d, offset)
        self.logit_scale = nn.Parameter(
            torch.tensor(float(config.logit_scale_init)),
            requires_grad=not config.freeze_logit_scale,
        )

    def encode_ecg(self, ecg: torch.Tensor) -> torch.Tensor:
        """ECG float32 [B, 12, 5000] -> embedding [B, d]."""
        return self.ecg_projection(self.ecg_encoder(ecg))

    def encode_labs(self, labs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """labs float32 [B, L] percentiles, observed float32 [B, L] (1 = observed) -> [B, d]."""
        return self.labs_projection(self.labs_encoder(labs, observed))

    def encode_cxr(self, cxr: torch.Tensor) -> torch.Tensor:
        """CXR float32 [B, 1, S, S] in [0, 1] (uint8 / 255) -> embedding [B, d]."""
        return self.cxr_projection(self.cxr_encoder(cxr))


def _build(config: ModelConfig) -> ThreeModalityModel:
    """The encoders' model, then the heads its objective needs (drawn after the encoders)."""
    if config.arch == "symile_mimic_reference":
        from models.reference_mimic import SymileMIMICReference

        model: ThreeModalityModel = SymileMIMICReference(
            embed_dim=config.embed_dim,
            n_labs=config.n_labs,
            cxr_size=config.cxr_size,
            logit_scale_init=config.logit_scale_init,
            freeze_logit_scale=config.freeze_logit_scale,
        )
    else:
        model = SymileModel(config)
    _add_heads(model, config)
    return model


def _add_heads(model: ThreeModalityModel, config: ModelConfig) -> None:
    """The objective's heads, built after the encoders so that these start as they would
    without them (the same draws from the generator)."""
    if config.gate_dim:
        model.gate = ModalityGate(3, config.embed_dim, key_dim=config.gate_dim)
    if config.matching_hidden:
        model.matching_head = MatchingHead(3, config.embed_dim, hidden=config.matching_hidden)


def build_model(
    config: ModelConfig,
    seed: int | None = None,
    cxr_weights: Path | None = None,
    encoder_weights: Path | None = None,
) -> ThreeModalityModel:
    """Build config.arch's model: a SymileModel, or for "symile_mimic_reference" the published
    architecture (SymileMIMICReference); both have ThreeModalityModel's interface, with the
    gate and matching head that config.gate_dim and config.matching_hidden ask for. With
    `seed`, initialise it reproducibly without touching global RNG.

    nn.Module initialisers draw from torch's global generator and take no generator
    argument, so the seeded build runs inside `fork_rng`, which restores the caller's state.
    """
    if seed is None:
        model = _build(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build(config)
    if cxr_weights is not None:
        if config.arch != "symile_clinical":
            raise WeightsError(
                Path(cxr_weights), f"is for the symile_clinical arch, not {config.arch}"
            )
        model.cxr_encoder.load_backbone(Path(cxr_weights))
    if encoder_weights is not None:
        if config.arch != "symile_clinical":
            raise WeightsError(
                Path(encoder_weights), f"is for the symile_clinical arch, not {config.arch}"
            )
        load_encoder_weights(model, Path(encoder_weights))
    return model
