"""Training-time perturbations of a batch, each drawn from its own seeded generator: lab
dropout, and augmentation of ECG and CXR.

The amounts are TrainConfig's `augmentation` (symile_clinical/formats/run_config.py).
Small cohorts are memorised: the trainer's contrastive loss can tell 872 training
admissions apart by each recording's own noise, lead gains and framing long before it learns
what the modalities share (docs/diagnosis.md). Each augmentation changes what identifies one
recording and keeps what it shows:

- ECG time shift: every row is rolled by its own whole number of samples in
  [-ecg_shift, ecg_shift] (a 10-s resting ECG is stationary; the wrap joins two beats);
- ECG gain: every (row, lead) is multiplied by exp(u), u uniform in [-ecg_gain, ecg_gain]
  (electrode placement and skin impedance vary between recordings);
- CXR shift: every image is translated by whole pixels in [-cxr_shift, cxr_shift] along
  each axis, edges replicated (the random crop of the reference's training transform);
- ECG noise: white Gaussian noise of standard deviation ecg_noise is added to every sample
  (the tensors are scaled to a peak of 1; another recording has other noise);
- CXR noise and gain: Gaussian noise of standard deviation cxr_noise is added to every pixel
  and each image is multiplied by exp(u), u uniform in [-cxr_gain, cxr_gain] (exposure and
  detector noise differ between films), then clipped to [0, 1];
- lab noise: Gaussian noise of standard deviation lab_noise is added to every observed lab
  percentile, clipped to [0, 1] (a repeat draw reads a little differently; what is far from
  normal stays far). Missing labs keep their fill value.

The noise augmentations are what stop memorisation in benchmarks/xor_saddle.py's toy: a
model can tell training admissions apart only by what stays fixed across their draws.

Every draw covers the global batch and each rank keeps its own rows (`_mine`), so
data-parallel training perturbs exactly as one process does on the concatenated batch. The
shifts and the ECG gain are a few numbers per row, drawn on the CPU generator; the noise kinds
draw as many numbers as the batch has samples and pixels, so they draw on the batch's own
device from a generator of their own (`noise_generator`: a CUDA generator on a GPU), with no
copy from the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from symile_clinical.formats.run_config import Augmentation


def _mine(draw: torch.Tensor, rows: int, rank: int) -> torch.Tensor:
    return draw[rank * rows : (rank + 1) * rows]


def drop_labs(
    labs: torch.Tensor,
    observed: torch.Tensor,
    fill: torch.Tensor,
    rate: float,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mark each observed lab missing with probability `rate`: observed -> 0, value -> fill.

    labs, observed float32 [B, L] (this rank's rows); fill float32 [L] (the dataset's fill
    percentiles). The draw covers the global batch and each rank keeps its own rows, so
    data-parallel runs drop the same labs as one process would.
    """
    rows = labs.shape[0]
    draw = torch.rand((rows * world_size, labs.shape[1]), generator=generator)
    drop = (_mine(draw, rows, rank) < rate) & (observed > 0)
    return torch.where(drop, fill.expand_as(labs), labs), torch.where(drop, 0.0, observed)


def shift_ecg(ecg: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll each row of ecg [B, leads, T] by its own shift (int64 [B]) along time."""
    samples = ecg.shape[-1]
    index = (torch.arange(samples, device=ecg.device)[None, :] - shifts[:, None]) % samples
    return torch.gather(ecg, 2, index[:, None, :].expand_as(ecg))


def shift_cxr(cxr: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image of cxr [B, C, S, S] by (dy, dx) whole pixels (|d| <= pad), edges
    replicated."""
    size = cxr.shape[-1]
    padded = F.pad(cxr, (pad, pad, pad, pad), mode="replicate")
    rows = torch.arange(size, device=cxr.device)
    top = (pad - dy)[:, None] + rows[None, :]  # [B, S]
    left = (pad - dx)[:, None] + rows[None, :]
    batch = torch.arange(cxr.shape[0], device=cxr.device)[:, None, None]
    picked = padded.permute(0, 2, 3, 1)[batch, top[:, :, None], left[:, None, :]]
    return picked.permute(0, 3, 1, 2).contiguous()


def _global_normal(
    like: torch.Tensor, world_size: int, rank: int, generator: torch.Generator
) -> torch.Tensor:
    """N(0, 1) of like's shape and dtype: this rank's rows of one draw over the global batch,
    drawn on the generator's device (the batch's)."""
    rows = like.shape[0]
    shape = (rows * world_size, *like.shape[1:])
    draw = torch.randn(shape, generator=generator, device=generator.device)
    return _mine(draw, rows, rank).to(like.device, like.dtype)


def _global_uniform(
    rows: int, world_size: int, rank: int, generator: torch.Generator
) -> torch.Tensor:
    """U(-1, 1) [rows]: this rank's rows of one draw over the global batch."""
    draw = torch.rand((rows * world_size,), generator=generator, device=generator.device)
    return _mine(draw * 2 - 1, rows, rank)


def augment(
    batch: dict[str, torch.Tensor],
    amounts: Augmentation,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
    noise_generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """This rank's batch (ecg, cxr, labs, labs_observed; other keys pass through), augmented.

    Draws cover the global batch, in a fixed order: ECG shift, ECG gain, CXR shift on the CPU
    `generator`; ECG noise, CXR noise, CXR gain, lab noise on `noise_generator` (on the
    batch's device; default `generator`). An amount of 0 draws nothing, so turning a kind on
    leaves the draws of the other kinds as they were.
    """
    noise_generator = generator if noise_generator is None else noise_generator
    ecg, cxr, labs = batch["ecg"], batch["cxr"], batch["labs"]
    rows, leads = ecg.shape[0], ecg.shape[1]
    total = rows * world_size
    if amounts.ecg_shift:
        k = amounts.ecg_shift
        shifts = _mine(torch.randint(-k, k + 1, (total,), generator=generator), rows, rank)
        ecg = shift_ecg(ecg, shifts.to(ecg.device))
    if amounts.ecg_gain:
        u = torch.rand((total, leads), generator=generator) * 2 - 1
        gain = torch.exp(_mine(u, rows, rank) * amounts.ecg_gain).to(ecg.device, ecg.dtype)
        ecg = ecg * gain[:, :, None]
    if amounts.cxr_shift:
        k = amounts.cxr_shift
        d = _mine(torch.randint(-k, k + 1, (total, 2), generator=generator), rows, rank)
        d = d.to(cxr.device)
        cxr = shift_cxr(cxr, d[:, 0], d[:, 1], k)
    noise = noise_generator
    if amounts.ecg_noise:
        ecg = ecg + amounts.ecg_noise * _global_normal(ecg, world_size, rank, noise)
    if amounts.cxr_noise or amounts.cxr_gain:
        if amounts.cxr_noise:
            cxr = cxr + amounts.cxr_noise * _global_normal(cxr, world_size, rank, noise)
        if amounts.cxr_gain:
            u = _global_uniform(rows, world_size, rank, noise)
            gain = torch.exp(u * amounts.cxr_gain).to(cxr.device, cxr.dtype)
            cxr = cxr * gain[:, None, None, None]
        cxr = cxr.clamp(0.0, 1.0)
    if amounts.lab_noise:
        observed = batch["labs_observed"] > 0
        noisy = labs + amounts.lab_noise * _global_normal(labs, world_size, rank, noise)
        labs = torch.where(observed, noisy.clamp(0.0, 1.0), labs)
    return {**batch, "ecg": ecg, "cxr": cxr, "labs": labs}
