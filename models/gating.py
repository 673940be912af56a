"""Gated Symile's learnable parts (arXiv 2604.05834): per-modality gate projections, the NULL
option's head, learnt neutral vectors, the gate's temperature and strength.

The gate decides, for each candidate, how much each other modality is trusted: a candidate of
modality t asks with its query q_t, every other modality m answers with its key k_m (both
projections of the embedding, L2-normalised), and a NULL option, whose logit comes from the
candidate, competes with them in one softmax (`symile_clinical/objective/gated_symile.py` does
the arithmetic). Unreliable or missing modalities are pulled toward the neutral vector n_m.

This module computes only per-row quantities, one modality at a time (a query needs no CXR,
a candidate CXR no ECG), and the global parameters, so that the loss can gather the rows across
ranks like the embeddings.

Initial values follow the paper's released configuration: gate strength sigmoid(-6), so that
training starts as plain (scaled, normalised) Symile; temperature 1 with a floor of 0.1
(softplus parametrisation); NULL bias 0; neutral vectors random unit vectors, trainable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class GateOutput(NamedTuple):
    """What the gated Symile loss and score need; lists hold one entry per modality, None for a
    modality not passed in.

    keys:        [B_m, k] unit vectors, what modality m's rows offer the gate
    queries:     [B_m, k] unit vectors, what modality m's rows ask of the others as candidates
    null_logits: [B_m] the NULL option's logit with modality m's row as candidate (before the
                 temperature)
    neutral:     [M, d] unit vectors, modality m's neutral direction
    temperature: 0-dim, > 0, divides the gate's logits
    strength:    0-dim, in (0, 1), how far the gate may move an embedding
    """

    keys: list[torch.Tensor | None]
    queries: list[torch.Tensor | None]
    null_logits: list[torch.Tensor | None]
    neutral: torch.Tensor
    temperature: torch.Tensor
    strength: torch.Tensor


class ModalityGate(nn.Module):
    """The gate of `num_modalities` modalities with `embed_dim`-dimensional embeddings;
    `key_dim` is the width of the query/key projections and of the NULL head's hidden layer."""

    def __init__(
        self,
        num_modalities: int = 3,
        embed_dim: int = 256,
        key_dim: int = 64,
        temperature_init: float = 1.0,
        min_temperature: float = 0.1,
        strength_init: float = -6.0,
    ) -> None:
        super().__init__()
        if temperature_init <= min_temperature:
            raise ValueError(
                f"temperature_init {temperature_init} must exceed min_temperature {min_temperature}"
            )
        self.min_temperature = min_temperature
        self.key_proj = nn.ModuleList(
            nn.Linear(embed_dim, key_dim, bias=False) for _ in range(num_modalities)
        )
        self.query_proj = nn.ModuleList(
            nn.Linear(embed_dim, key_dim, bias=False) for _ in range(num_modalities)
        )
        self.null_head = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, key_dim), nn.ReLU(), nn.Linear(key_dim, 1)
        )
        self.null_bias = nn.Parameter(torch.zeros(num_modalities))
        self.neutral_raw = nn.Parameter(F.normalize(torch.randn(num_modalities, embed_dim), dim=1))
        # softplus(raw) + min_temperature == temperature_init at the start.
        excess = temperature_init - min_temperature
        self.temperature_raw = nn.Parameter(torch.tensor(excess + math.log(-math.expm1(-excess))))
        self.strength_logit = nn.Parameter(torch.tensor(float(strength_init)))

    @property
    def num_modalities(self) -> int:
        """M, the number of modalities the gate was built for."""
        return len(self.key_proj)

    def forward(self, embeddings: Sequence[torch.Tensor | None]) -> GateOutput:
        """One [B_m, d] tensor (or None) per modality -> GateOutput; row counts may differ
        between modalities (queries and candidates at retrieval)."""
        if len(embeddings) != self.num_modalities:
            raise ValueError(
                f"the gate has {self.num_modalities} modalities, got {len(embeddings)} tensors"
            )
        keys, queries, nulls = [], [], []
        for m, emb in enumerate(embeddings):
            if emb is None:
                keys.append(None)
                queries.append(None)
                nulls.append(None)
                continue
            keys.append(F.normalize(self.key_proj[m](emb), dim=1, eps=1e-6))
            queries.append(F.normalize(self.query_proj[m](emb), dim=1, eps=1e-6))
            nulls.append(self.null_head(emb).squeeze(1) + self.null_bias[m])
        return GateOutput(
            keys=keys,
            queries=queries,
            null_logits=nulls,
            neutral=F.normalize(self.neutral_raw, dim=1, eps=1e-6),
            temperature=F.softplus(self.temperature_raw) + self.min_temperature,
            strength=torch.sigmoid(self.strength_logit),
        )
