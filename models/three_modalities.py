"""What every model of the project shares: three encoders, a learned log logit scale and the
objective's optional heads (Gated Symile's gate, GRAM's matching head)."""

from __future__ import annotations

import math

import torch
from torch import nn

LOGIT_SCALE_MAX = math.log(100.0)  # CLIP clamps exp(scale) at 100; the trainer does too


class ThreeModalityModel(nn.Module):
    """Base of the ECG + labs + CXR models (SymileModel, SymileMIMICReference): subclasses
    define the three encoder modules, `encode_ecg`, `encode_labs`, `encode_cxr` and the
    parameter `logit_scale` (log scale); forward and the clamp are here.

    `gate` (models.gating.ModalityGate) and `matching_head` (models.matching.MatchingHead)
    are None unless the objective needs them (`build_model` adds them): submodules of the
    model, so that they are saved with it and trained inside the DDP-wrapped module."""

    ecg_encoder: nn.Module
    labs_encoder: nn.Module
    cxr_encoder: nn.Module
    logit_scale: nn.Parameter

    def __init__(self) -> None:
        super().__init__()
        self.gate: nn.Module | None = None
        self.matching_head: nn.Module | None = None

    def encode_ecg(self, ecg: torch.Tensor) -> torch.Tensor:
        """ECG float32 [B, 12, T] -> [B, d]."""
        raise NotImplementedError

    def encode_labs(self, labs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Labs float32 [B, L] percentiles and observed [B, L] (1 = observed) -> [B, d]."""
        raise NotImplementedError

    def encode_cxr(self, cxr: torch.Tensor) -> torch.Tensor:
        """CXR float32 [B, 1, S, S] in [0, 1] -> [B, d]."""
        raise NotImplementedError

    def forward(
        self,
        ecg: torch.Tensor,
        labs: torch.Tensor,
        observed: torch.Tensor,
        cxr: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three embeddings (ecg_emb, labs_emb, cxr_emb), each [B, d]."""
        return self.encode_ecg(ecg), self.encode_labs(labs, observed), self.encode_cxr(cxr)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp the log scale at ln 100 (after every optimiser step, as CLIP does)."""
        self.logit_scale.clamp_(max=LOGIT_SCALE_MAX)
