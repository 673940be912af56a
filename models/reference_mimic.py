"""The Symile-MIMIC reference architecture, so that the authors' checkpoint loads strictly.

The published checkpoint (symile_mimic_model.ckpt, a Lightning checkpoint of the model in
experiments/models/symile_mimic_model.py of github.com/rajesh-lab/symile) holds these module
names; `SymileMIMICReference.load_state_dict(state_dict, strict=True)` takes its state_dict
as it is:

- `cxr_encoder`: torchvision ResNet-50 (`resnet`, fc -> d) + `layer_norm`, on ImageNet-
  normalised 3 x 320 x 320 images;
- `ecg_encoder`: torchvision ResNet-18 whose stem `resnet.conv1` takes one channel, reading
  the ECG as a 5000 x 12 image (time down, leads across), fc -> d, + `layer_norm`;
- `labs_encoder`: `fc1` (2L -> 256), `fc2` (256 -> 1024), `fc3` (1024 -> d) with GELU between
  them and `layer_norm` after, on [percentiles, observed] concatenated (2L = 100);
- `logit_scale`: the learned log of the logit scale.

The encoders take this project's stored formats (docs/formats.md) and convert them inside to
what the reference saw, so evaluation, the index and the app use the model unchanged:
ECG float32 [B, 12, T] in the canonical lead order -> [B, 1, T, 12] in MIMIC-IV-ECG's file
order; CXR float32 [B, 1, S, S] in [0, 1] -> resized to 320 x 320 (the reference's resize of
the short side to 320 and centre crop, for a square image) and grey replicated into three
ImageNet-normalised channels. Symile's score is exp(logit_scale) * <r_ecg * r_labs, r_cxr>.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from models.three_modalities import ThreeModalityModel

# The reference's CXR normalisation (experiments/constants.py, IMAGENET_MEAN / IMAGENET_STD).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_CXR_SIZE = 320

# Our stored lead order, and the one the reference's ECG tensors have: the WFDB column order
# of MIMIC-IV-ECG, which stores aVF before aVL.
CANONICAL_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
REFERENCE_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
# REFERENCE_LEADS[j] is CANONICAL_LEADS[REFERENCE_FROM_CANONICAL[j]].
REFERENCE_FROM_CANONICAL = tuple(CANONICAL_LEADS.index(name) for name in REFERENCE_LEADS)


class ReferenceCXREncoder(nn.Module):
    """ResNet-50 with fc -> d and a LayerNorm: ImageNet-normalised [B, 3, 320, 320] -> [B, d]."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.resnet = resnet.resnet50(weights=None)
        self.resnet.fc = nn.Linear(self.resnet.fc.in_features, embed_dim)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 320, 320] ImageNet-normalised -> [B, d]."""
        return self.layer_norm(self.resnet(x))


class ReferenceECGEncoder(nn.Module):
    """ResNet-18 with a 1-channel stem, fc -> d and a LayerNorm: [B, 1, 5000, 12] -> [B, d]."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.resnet = resnet.resnet18(weights=None)
        self.resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.resnet.fc = nn.Linear(self.resnet.fc.in_features, embed_dim)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, T, 12] (min-max scaled to [-1, 1], MIMIC-IV-ECG lead order) -> [B, d]."""
        return self.layer_norm(self.resnet(x))


class ReferenceLabsEncoder(nn.Module):
    """MLP 2L -> 256 -> 1024 -> d with GELU, then a LayerNorm: [B, 2L] -> [B, d]."""

    def __init__(self, n_labs: int, embed_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * n_labs, 256)
        self.fc2 = nn.Linear(256, 1024)
        self.fc3 = nn.Linear(1024, embed_dim)
        self.gelu = nn.GELU()
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2L] = [percentiles, observed (1 = observed)] -> [B, d]."""
        x = self.gelu(self.fc1(x))
        x = self.gelu(self.fc2(x))
        return self.layer_norm(self.fc3(x))


def ecg_to_reference(ecg: torch.Tensor) -> torch.Tensor:
    """float [B, 12, T] canonical leads -> [B, 1, T, 12] in the reference's lead order."""
    if ecg.dim() != 3 or ecg.shape[1] != len(CANONICAL_LEADS):
        raise ValueError(f"ECG must be [B, 12, T], got {tuple(ecg.shape)}")
    reordered = ecg[:, list(REFERENCE_FROM_CANONICAL), :]
    return reordered.transpose(1, 2).unsqueeze(1)


def cxr_to_reference(cxr: torch.Tensor, size: int = REFERENCE_CXR_SIZE) -> torch.Tensor:
    """float [B, 1, S, S] grey in [0, 1] -> [B, 3, size, size] ImageNet-normalised.

    A square image of another size is resized (bilinear, antialiased): for a square image
    that is the reference's resize of the short side followed by its centre crop.
    """
    if cxr.dim() != 4 or cxr.shape[1] != 1:
        raise ValueError(f"CXR must be [B, 1, S, S], got {tuple(cxr.shape)}")
    if cxr.shape[-2:] != (size, size):
        cxr = F.interpolate(cxr, size=(size, size), mode="bilinear", antialias=True)
        cxr = cxr.clamp(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=cxr.dtype, device=cxr.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=cxr.dtype, device=cxr.device).view(1, 3, 1, 1)
    return (cxr.expand(-1, 3, -1, -1) - mean) / std


class SymileMIMICReference(ThreeModalityModel):
    """The reference Symile-MIMIC model behind this project's model interface.

    `encode_ecg`, `encode_labs`, `encode_cxr` and `forward` take the project's stored
    formats (see the module docstring); `logit_scale` is the log scale, as in SymileModel.
    """

    def __init__(
        self,
        embed_dim: int,
        n_labs: int = 50,
        cxr_size: int = REFERENCE_CXR_SIZE,
        logit_scale_init: float = -7.0,
        freeze_logit_scale: bool = False,
    ) -> None:
        super().__init__()
        self.cxr_size = cxr_size
        self.ecg_encoder = ReferenceECGEncoder(embed_dim)
        self.cxr_encoder = ReferenceCXREncoder(embed_dim)
        self.labs_encoder = ReferenceLabsEncoder(n_labs, embed_dim)
        self.logit_scale = nn.Parameter(
            torch.tensor(float(logit_scale_init)), requires_grad=not freeze_logit_scale
        )

    def encode_ecg(self, ecg: torch.Tensor) -> torch.Tensor:
        """ECG float32 [B, 12, T] (canonical leads, min-max to [-1, 1]) -> [B, d]."""
        return self.ecg_encoder(ecg_to_reference(ecg))

    def encode_labs(self, labs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """labs float32 [B, L] percentiles, observed [B, L] (1 = observed) -> [B, d]."""
        return self.labs_encoder(torch.cat([labs, observed.to(labs.dtype)], dim=1))

    def encode_cxr(self, cxr: torch.Tensor) -> torch.Tensor:
        """CXR float32 [B, 1, S, S] in [0, 1] -> [B, d]."""
        return self.cxr_encoder(cxr_to_reference(cxr, self.cxr_size))


@dataclass(frozen=True)
class ReferenceShape:
    """What a SymileMIMICReference state dict says of its model: d, the number of labs L and
    the learned log logit scale."""

    embed_dim: int
    n_labs: int
    logit_scale: float


# The weights that give the shape away: fc3 is [d, 1024], fc1 is [256, 2L].
_LABS_OUT = "labs_encoder.fc3.weight"
_LABS_IN = "labs_encoder.fc1.weight"
_LOGIT_SCALE = "logit_scale"


def reference_shape(state_dict: Mapping[str, torch.Tensor]) -> ReferenceShape:
    """The shape of the SymileMIMICReference a state dict holds (its d and lab count, read
    off the labs encoder's first and last layers); KeyError naming the first missing weight
    when it is not one."""
    for key in (_LABS_OUT, _LABS_IN, _LOGIT_SCALE):
        if key not in state_dict:
            raise KeyError(key)
    return ReferenceShape(
        embed_dim=int(state_dict[_LABS_OUT].shape[0]),
        n_labs=int(state_dict[_LABS_IN].shape[1]) // 2,
        logit_scale=float(state_dict[_LOGIT_SCALE]),
    )
