"""A 1-D ResNet over 12-lead ECG: [B, 12, 5000] float32 -> [B, out_dim]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NORMS = ("batch", "group")


def norm_1d(kind: str, channels: int) -> nn.Module:
    """BatchNorm1d, or GroupNorm (no batch statistics: identical under any data parallelism).

    GroupNorm uses groups of 16 channels (one group below 32 channels): a group of a single
    channel would be instance norm, which erases each channel's level and scale per record.
    """
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 16), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ResidualBlock1d(nn.Module):
    """Two same-padded convolutions with a (projected when the shape changes) skip."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, norm: str
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.norm1 = norm_1d(norm, out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.norm2 = norm_1d(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False),
                norm_1d(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, T] -> [B, C_out, ceil(T / stride)]."""
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.skip(x))


class ECGEncoder(nn.Module):
    """1-D ResNet: stem conv + max-pool, stages of residual blocks, global average pool, linear.

    The shape is entirely in the constructor arguments (as in antonior92's ECG ResNet):
    `channels[i]` filters and `blocks[i]` residual blocks in stage i; every stage after the
    first halves the time axis. With channels (64, 128, 256, 512) and blocks (2, 2, 2, 2)
    this is the ResNet-18 layout in one dimension.
    """

    def __init__(
        self,
        out_dim: int,
        leads: int = 12,
        samples: int = 5000,
        channels: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 7,
        stem_kernel_size: int = 15,
        stem_stride: int = 2,
        dropout: float = 0.0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(channels) != len(blocks) or not channels:
            raise ValueError("channels and blocks must be non-empty and of equal length")
        self.leads = leads
        self.samples = samples
        self.stem = nn.Sequential(
            nn.Conv1d(
                leads,
                channels[0],
                stem_kernel_size,
                stride=stem_stride,
                padding=stem_kernel_size // 2,
                bias=False,
            ),
            norm_1d(norm, channels[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(kernel_size=3, stride=2, padding=1),
        )
        stages = []
        in_channels = channels[0]
        for index, (width, depth) in enumerate(zip(channels, blocks, strict=True)):
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(ResidualBlock1d(in_channels, width, kernel_size, stride, norm))
                in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, out_dim)

    def forward(self, ecg: torch.Tensor) -> torch.Tensor:
        """ECG float32 [B, leads, samples] (normalised signal) -> features [B, out_dim]."""
        if ecg.ndim != 3 or ecg.shape[1] != self.leads:
            raise ValueError(f"ECG must be [B, {self.leads}, T], got {list(ecg.shape)}")
        x = self.stages(self.stem(ecg))
        x = self.pool(x).flatten(1)
        return self.fc(self.dropout(x))
