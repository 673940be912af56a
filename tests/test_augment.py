"""Training-time augmentation: what each one does, and that ranks augment as one process."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from symile_clinical.augment import Augmentation, augment, shift_cxr, shift_ecg
from symile_clinical.config import ConfigError, TrainConfig, load_config


def _batch(rows: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 12, 200, generator=g), torch.rand(rows, 1, 16, 16, generator=g)


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
    ecg, cxr = _batch()
    out, same_cxr = augment(ecg, cxr, Augmentation(ecg_gain=0.1), torch.Generator().manual_seed(1))
    ratio = out / ecg
    per_lead = ratio[:, :, :1]
    torch.testing.assert_close(ratio, per_lead.expand_as(ratio))
    assert (per_lead.log().abs() <= 0.1 + 1e-6).all() and per_lead.std() > 0
    assert torch.equal(same_cxr, cxr)


def test_no_augmentation_leaves_the_batch_and_the_generator_alone() -> None:
    ecg, cxr = _batch()
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    out_ecg, out_cxr = augment(ecg, cxr, Augmentation(), g)
    assert out_ecg is ecg and out_cxr is cxr and torch.equal(g.get_state(), state)
    assert not Augmentation().enabled and Augmentation(cxr_shift=1).enabled


def test_ranks_keep_their_rows_of_the_global_draw() -> None:
    """Two ranks with the same seed augment their halves as one process augments the whole."""
    ecg, cxr = _batch(rows=8)
    amounts = Augmentation(ecg_shift=30, ecg_gain=0.2, cxr_shift=3)
    whole = augment(ecg, cxr, amounts, torch.Generator().manual_seed(5))
    for rank in range(2):
        mine = slice(4 * rank, 4 * rank + 4)
        part = augment(
            ecg[mine], cxr[mine], amounts, torch.Generator().manual_seed(5), rank, world_size=2
        )
        assert torch.equal(part[0], whole[0][mine]) and torch.equal(part[1], whole[1][mine])


def test_negative_or_fractional_amounts_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Augmentation(ecg_shift=-1)
    with pytest.raises(ValueError, match="augment_"):
        TrainConfig(augment_cxr_shift=-2)
    path = tmp_path / "c.toml"
    path.write_text('preset = "demo"\naugment_ecg_shift = 500.0\n')
    with pytest.raises(ConfigError, match="whole numbers") as caught:
        load_config(path)
    assert str(path) in str(caught.value)
