"""Training-time augmentation: what each one does, and that ranks augment as one process."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from symile_clinical.formats.run_config import (
    Augmentation,
    ConfigError,
    TrainConfig,
    config_from_dict,
)
from symile_clinical.training.augment import augment, shift_cxr, shift_ecg
from symile_clinical.training.config import load_config


def _batch(rows: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 12, 200, generator=g), torch.rand(rows, 1, 16, 16, generator=g)


def _full_batch(rows: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch as the trainer augments it: ECG, CXR, lab percentiles with some missing."""
    ecg, cxr = _batch(rows, seed)
    g = torch.Generator().manual_seed(seed + 100)
    observed = (torch.rand(rows, 10, generator=g) < 0.7).float()
    labs = torch.where(observed > 0, torch.rand(rows, 10, generator=g), torch.full((rows, 10), 0.5))
    return {
        "ecg": ecg,
        "cxr": cxr,
        "labs": labs,
        "labs_observed": observed,
        "hadm": torch.arange(rows),
    }


def test_ecg_shift_rolls_each_row_by_its_own_amount() -> None:
    ecg, _ = _batch()
    shifts = torch.tensor([0, 1, -1, 7, -50, 199])
    out = shift_ecg(ecg, shifts)
    for row, k in enumerate(shifts.tolist()):
        assert torch.equal(out[row], torch.roll(ecg[row], k, dims=-1))


def test_cxr_shift_is_a_translation_with_replicated_edges() -> None:
    _, cxr = _batch()
    dy, dx = torch.tensor([0, 2, -2, 1, 0, -1]), torch.tensor([0, -1, 2, 2, -2, 0])
    out = shift_cxr(cxr, dy, dx, pad=2)
    for row in range(cxr.shape[0]):
        padded = F.pad(cxr[row : row + 1], (2, 2, 2, 2), mode="replicate")[0]
        top, left = 2 - int(dy[row]), 2 - int(dx[row])
        assert torch.equal(out[row], padded[:, top : top + 16, left : left + 16])
    assert torch.equal(out[0], cxr[0])  # a zero shift is the image itself


def test_gain_scales_each_lead_within_its_bound() -> None:
    batch = _full_batch()
    ecg, cxr = batch["ecg"], batch["cxr"]
    out = augment(batch, Augmentation(ecg_gain=0.1), torch.Generator().manual_seed(1))
    same_cxr = out["cxr"]
    ratio = out["ecg"] / ecg
    per_lead = ratio[:, :, :1]
    torch.testing.assert_close(ratio, per_lead.expand_as(ratio))
    assert (per_lead.log().abs() <= 0.1 + 1e-6).all() and per_lead.std() > 0
    assert torch.equal(same_cxr, cxr)


def test_no_augmentation_leaves_the_batch_and_the_generator_alone() -> None:
    batch = _full_batch()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out = augment(batch, Augmentation(), g)
    assert all(out[key] is batch[key] for key in batch) and torch.equal(g.get_state(), state)
    assert not Augmentation().enabled and Augmentation(cxr_shift=1).enabled


def test_ranks_keep_their_rows_of_the_global_draw() -> None:
    """Two ranks with the same seed augment their halves as one process augments the whole."""
    batch = _full_batch(rows=8)
    amounts = Augmentation(30, 0.2, 3, ecg_noise=0.05, cxr_noise=0.05, cxr_gain=0.2, lab_noise=0.1)
    whole = augment(batch, amounts, torch.Generator().manual_seed(5))
    for rank in range(2):
        mine = slice(4 * rank, 4 * rank + 4)
        half = {key: value[mine] for key, value in batch.items()}
        part = augment(half, amounts, torch.Generator().manual_seed(5), rank, world_size=2)
        for key in batch:
            assert torch.equal(part[key], whole[key][mine]), key


def test_noise_draws_from_its_own_device_generator_ranks_included() -> None:
    """The noise kinds draw on `noise_generator` (the batch's device in training): the CPU
    generator is left alone, and two ranks still equal one process."""
    batch = _full_batch(rows=8)
    amounts = Augmentation(30, 0.2, 3, ecg_noise=0.05, cxr_noise=0.05, cxr_gain=0.2, lab_noise=0.1)
    only_noise = Augmentation(ecg_noise=0.05, cxr_noise=0.05, cxr_gain=0.2, lab_noise=0.1)
    cpu = torch.Generator().manual_seed(5)
    state = cpu.get_state()
    augment(batch, only_noise, cpu, noise_generator=torch.Generator().manual_seed(6))
    assert torch.equal(cpu.get_state(), state)
    assert only_noise.noise_enabled and not Augmentation(30, 0.2, 3).noise_enabled

    def run(part, rank=0, world=1):
        return augment(
            part,
            amounts,
            torch.Generator().manual_seed(5),
            rank,
            world,
            noise_generator=torch.Generator(device="cpu").manual_seed(6),
        )

    whole = run(batch)
    for rank in range(2):
        mine = slice(4 * rank, 4 * rank + 4)
        part = run({key: value[mine] for key, value in batch.items()}, rank, 2)
        for key in batch:
            assert torch.equal(part[key], whole[key][mine]), key


def test_noise_is_fresh_per_value_and_keeps_ranges_and_missing_labs() -> None:
    batch = _full_batch(rows=64)
    amounts = Augmentation(ecg_noise=0.05, cxr_noise=0.05, cxr_gain=0.2, lab_noise=0.1)
    out = augment(batch, amounts, torch.Generator().manual_seed(7))
    ecg_delta = out["ecg"] - batch["ecg"]
    assert abs(float(ecg_delta.std()) - 0.05) < 0.005 and abs(float(ecg_delta.mean())) < 0.005
    assert float(out["cxr"].min()) >= 0.0 and float(out["cxr"].max()) <= 1.0
    assert not torch.equal(out["cxr"], batch["cxr"])
    observed = batch["labs_observed"] > 0
    assert torch.equal(out["labs"][~observed], batch["labs"][~observed])  # fill value kept
    lab_delta = (out["labs"] - batch["labs"])[observed]
    assert (lab_delta != 0).float().mean() > 0.95
    assert float(out["labs"].min()) >= 0.0 and float(out["labs"].max()) <= 1.0
    assert torch.equal(out["labs_observed"], batch["labs_observed"])
    assert torch.equal(out["hadm"], batch["hadm"])


def test_a_new_kind_leaves_the_draws_of_the_others_as_they_were() -> None:
    """Presets chosen before the noise augmentations existed still train bit for bit alike."""
    batch = _full_batch()
    old = augment(batch, Augmentation(30, 0.2, 3), torch.Generator().manual_seed(9))
    new = augment(batch, Augmentation(30, 0.2, 3, lab_noise=0.1), torch.Generator().manual_seed(9))
    assert torch.equal(old["ecg"], new["ecg"]) and torch.equal(old["cxr"], new["cxr"])
    assert not torch.equal(old["labs"], new["labs"])


def test_negative_or_fractional_amounts_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Augmentation(ecg_shift=-1)
    with pytest.raises(ValueError, match=">= 0"):
        Augmentation(lab_noise=-0.1)
    with pytest.raises(ValueError, match="whole numbers"):
        Augmentation(cxr_shift=2.5)
    # Validated once, in Augmentation, whichever way a config spells the amounts.
    with pytest.raises(ConfigError, match="augmentation amounts must be >= 0"):
        config_from_dict({"augment_cxr_noise": -0.5})
    with pytest.raises(ConfigError, match="augmentation amounts must be >= 0"):
        config_from_dict({"augmentation": {"cxr_shift": -2}})
    with pytest.raises(ValueError, match="augmentation must be an Augmentation"):
        TrainConfig(augmentation={"cxr_shift": 2})
    for text in ("augment_ecg_shift = 500.0\n", "[augmentation]\necg_shift = 500.0\n"):
        path = tmp_path / "c.toml"
        path.write_text(f'preset = "demo"\n{text}')
        with pytest.raises(ConfigError, match="whole numbers") as caught:
            load_config(path)
        assert str(path) in str(caught.value)
