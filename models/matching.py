"""GRAM's data-anchor matching head, on pooled embeddings (arXiv 2412.11959).

The paper's head is a multimodal transformer over the encoders' unpooled tokens; this one is an
MLP over the concatenated [B, d] embeddings of all modalities, which is what this project's
encoders expose. It returns one logit per row: does this tuple belong together?
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MatchingHead(nn.Module):
    """MLP: M embeddings [n, d] concatenated -> hidden (ReLU) -> one logit [n]."""

    def __init__(self, num_modalities: int = 3, embed_dim: int = 256, hidden: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(num_modalities * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, rows: Sequence[torch.Tensor]) -> torch.Tensor:
        """One [n, d] tensor per modality, in modality order -> [n] logits."""
        return self.mlp(torch.cat(list(rows), dim=1)).squeeze(1)
