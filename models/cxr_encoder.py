"""A torchvision ResNet with a 1-channel stem over chest X-rays: [B, 1, S, S] -> [B, out_dim]."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from models.weights import WeightsError, read_state_dict

# resnet18 and resnet50 are the standard ones. resnet10 is torchvision's ResNet class with one
# BasicBlock per stage, and resnet_tiny keeps only its first two stages (0.3 M parameters):
# the same family at sizes a 2-core CPU trains in minutes (demo) or seconds (tests).
ARCHITECTURES = ("resnet_tiny", "resnet10", "resnet18", "resnet50")


# The error of a --cxr-weights file: the one error of every local weights file.
CXRWeightsError = WeightsError


def group_norm_2d(channels: int) -> nn.GroupNorm:
    """GroupNorm with groups of 16 channels, the batch-independent alternative to BatchNorm2d."""
    return nn.GroupNorm(max(1, channels // 16), channels)


def build_resnet(arch: str, norm: str = "batch") -> resnet.ResNet:
    """A randomly initialised torchvision ResNet (nothing is downloaded).

    norm "batch" is torchvision's BatchNorm2d; "group" swaps in GroupNorm, whose output does
    not depend on the batch (no running statistics that lag behind the weights, and
    data-parallel training equals one process).
    """
    if norm not in ("batch", "group"):
        raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")
    norm_layer = group_norm_2d if norm == "group" else None
    if arch in ("resnet10", "resnet_tiny"):
        net = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], norm_layer=norm_layer)
        if arch == "resnet_tiny":
            net.layer3, net.layer4 = nn.Identity(), nn.Identity()
            net.fc = nn.Linear(128, net.fc.out_features)
        return net
    if arch == "resnet18":
        return resnet.resnet18(weights=None, norm_layer=norm_layer)
    if arch == "resnet50":
        return resnet.resnet50(weights=None, norm_layer=norm_layer)
    raise ValueError(f"CXR architecture must be one of {ARCHITECTURES}, got {arch!r}")


class CXREncoder(nn.Module):
    """torchvision ResNet, 1-channel stem, fc replaced by a projection to out_dim.

    Images of another size than `image_size` are resized (bilinear, antialiased) inside the
    encoder, so a dataset written at one size serves a model trained at another.
    """

    def __init__(
        self, out_dim: int, arch: str = "resnet50", image_size: int = 320, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.resnet = build_resnet(arch, norm)
        self.resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.resnet.fc = nn.Linear(self.resnet.fc.in_features, out_dim)

    def load_backbone(self, path: Path) -> None:
        """Load a local state dict (weights_only) into the ResNet; fc and stem may differ.

        A 3-channel conv1 is summed over its input channels (the usual grey-scale adaptation);
        fc weights of another shape are skipped, since fc is our projection.
        """
        state = {key.removeprefix("resnet."): value for key, value in read_state_dict(path).items()}
        conv1 = state.get("conv1.weight")
        if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] == 3:
            state["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
        own = self.resnet.state_dict()
        # BatchNorm statistics have no place in a GroupNorm ResNet; its affine weights do.
        batch_stats = ("running_mean", "running_var", "num_batches_tracked")
        state = {k: v for k, v in state.items() if k in own or not k.endswith(batch_stats)}
        for key in ("fc.weight", "fc.bias"):
            if key in state and state[key].shape != own[key].shape:
                del state[key]
        missing, unexpected = self.resnet.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith("fc.")]
        if missing or unexpected:
            raise CXRWeightsError(
                path,
                f"does not match the ResNet: missing {missing[:5]}, unexpected {unexpected[:5]}",
            )

    def forward(self, cxr: torch.Tensor) -> torch.Tensor:
        """CXR float32 [B, 1, S, S] in [0, 1] (0 = black) -> features [B, out_dim]."""
        if cxr.ndim != 4 or cxr.shape[1] != 1:
            raise ValueError(f"CXR must be [B, 1, S, S], got {list(cxr.shape)}")
        if cxr.shape[-2:] != (self.image_size, self.image_size):
            cxr = F.interpolate(
                cxr,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return self.resnet(cxr)
