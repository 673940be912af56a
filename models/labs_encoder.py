"""An MLP over lab percentiles and their observed mask: [B, L] + [B, L] -> [B, out_dim]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class LabsEncoder(nn.Module):
    """MLP over concat(percentiles, observed), so that a missing lab is visibly missing.

    This is the paper's missing-data approach: a missing lab carries a fill value in
    `labs` and a 0 in `observed`, and the network sees both.
    """

    def __init__(
        self,
        n_labs: int,
        out_dim: int,
        hidden: Sequence[int] = (256, 1024),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_labs = n_labs
        layers: list[nn.Module] = []
        width = 2 * n_labs
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, labs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """labs float32 [B, L] percentiles in [0, 1], observed float32 [B, L] (1 = observed)."""
        if labs.shape != observed.shape or labs.ndim != 2 or labs.shape[1] != self.n_labs:
            raise ValueError(
                f"labs and observed must both be [B, {self.n_labs}], "
                f"got {list(labs.shape)} and {list(observed.shape)}"
            )
        return self.mlp(torch.cat([labs, observed.to(labs.dtype)], dim=1))
