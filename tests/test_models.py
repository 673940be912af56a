"""The encoders and the models: shapes, projections, missing labs, logit scale, weights."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from models import (
    LOGIT_SCALE_INIT,
    LOGIT_SCALE_MAX,
    CXREncoder,
    CXRWeightsError,
    ECGEncoder,
    LabsEncoder,
    ModelConfig,
    SymileMIMICReference,
    SymileModel,
    ThreeModalityModel,
    WeightsError,
    build_model,
)
from models.reference_mimic import ReferenceShape, reference_shape

TINY = ModelConfig(
    embed_dim=16,
    ecg_channels=(4, 8),
    ecg_blocks=(1, 1),
    ecg_kernel_size=5,
    ecg_stem_stride=4,
    norm="group",
    n_labs=5,
    labs_hidden=(16,),
    cxr_arch="resnet_tiny",
    cxr_size=32,
)


def _inputs(batch: int = 3, samples: int = 5000, size: int = 32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    ecg = torch.randn(batch, 12, samples, generator=g)
    labs = torch.rand(batch, 5, generator=g)
    observed = (torch.rand(batch, 5, generator=g) > 0.3).float()
    cxr = torch.rand(batch, 1, size, size, generator=g)
    return ecg, labs, observed, cxr


def test_forward_gives_three_embeddings_of_dimension_d() -> None:
    model = build_model(TINY, seed=0).eval()
    ecg_emb, labs_emb, cxr_emb = model(*_inputs())
    for emb in (ecg_emb, labs_emb, cxr_emb):
        assert emb.shape == (3, 16)
        assert torch.isfinite(emb).all()
    ecg, labs, observed, cxr = _inputs()
    torch.testing.assert_close(model.encode_ecg(ecg), ecg_emb)
    torch.testing.assert_close(model.encode_labs(labs, observed), labs_emb)
    torch.testing.assert_close(model.encode_cxr(cxr), cxr_emb)


def test_l2_projection_gives_unit_vectors_and_layernorm_standardises() -> None:
    l2 = build_model(ModelConfig(**{**TINY.__dict__, "projection": "l2"}), seed=0).eval()
    for emb in l2(*_inputs()):
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    layernorm = build_model(TINY, seed=0).eval()
    for emb in layernorm(*_inputs()):
        # LayerNorm's affine starts at identity: zero mean, unit (biased) variance per row.
        torch.testing.assert_close(emb.mean(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(emb.var(dim=1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)


def test_layernorm_offset_starts_every_coordinate_at_the_offset() -> None:
    """With projection_offset c the LayerNorm output is c + a standardised row, so the MIP of
    three embeddings starts as d c^3 + c^2 (sum of each) + c (pairwise dots) + the 3-way term."""
    shifted = build_model(ModelConfig(**{**TINY.__dict__, "projection_offset": 1.0}), seed=0)
    plain = build_model(TINY, seed=0)
    inputs = _inputs()
    for a, b in zip(shifted.eval()(*inputs), plain.eval()(*inputs), strict=True):
        torch.testing.assert_close(a, b + 1.0)
    e, lab, c = (x - 1.0 for x in shifted(*inputs))
    mip = ((1 + e) * (1 + lab) * (1 + c)).sum(dim=1)
    expanded = TINY.embed_dim + (e * c + lab * c + e * lab + e * lab * c).sum(dim=1)
    torch.testing.assert_close(mip, expanded)  # sum of each standardised row is 0


def test_unknown_projection_is_refused() -> None:
    with pytest.raises(ValueError, match="projection"):
        ModelConfig(projection="batchnorm")


def test_a_missing_lab_is_visible_to_the_labs_encoder() -> None:
    encoder = LabsEncoder(n_labs=4, out_dim=8, hidden=(16,)).eval()
    labs = torch.full((1, 4), 0.5)
    observed = torch.ones(1, 4)
    hidden = observed.clone()
    hidden[0, 2] = 0.0
    # Same values, only the observed flag differs: the output must differ.
    assert not torch.allclose(encoder(labs, observed), encoder(labs, hidden))
    assert encoder.mlp[0].in_features == 8  # percentiles and mask, concatenated


def test_ecg_encoder_shape_comes_from_its_arguments() -> None:
    encoder = ECGEncoder(
        out_dim=7, leads=3, samples=1000, channels=(4, 8, 16), blocks=(1, 2, 1), norm="group"
    )
    assert encoder(torch.randn(2, 3, 1000)).shape == (2, 7)
    stage_blocks = [type(m).__name__ for m in encoder.stages]
    assert stage_blocks == ["ResidualBlock1d"] * 4
    with pytest.raises(ValueError, match="ECG must be"):
        encoder(torch.randn(2, 12, 1000))


def test_resnet18_like_ecg_encoder_has_four_stages_of_two_blocks() -> None:
    encoder = ECGEncoder(out_dim=8)
    widths = [block.conv2.out_channels for block in encoder.stages]
    assert widths == [64, 64, 128, 128, 256, 256, 512, 512]


def test_cxr_encoder_has_a_one_channel_stem_and_resizes() -> None:
    encoder = CXREncoder(out_dim=6, arch="resnet18", image_size=32).eval()
    assert encoder.resnet.conv1.in_channels == 1
    small = torch.rand(2, 1, 32, 32)
    assert encoder(small).shape == (2, 6)
    # A larger image is resized to image_size first: the same as resizing it ourselves.
    large = torch.rand(2, 1, 64, 64)
    resized = torch.nn.functional.interpolate(
        large, size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(encoder(large), encoder(resized))


def test_logit_scale_starts_at_clip_value_and_clamps_at_ln_100() -> None:
    assert math.isclose(LOGIT_SCALE_INIT, 2.65926, abs_tol=1e-5)
    model = build_model(TINY, seed=0)
    assert isinstance(model.logit_scale, torch.nn.Parameter)
    assert model.logit_scale.requires_grad
    assert math.isclose(model.logit_scale.item(), 2.65926, abs_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.clamp_logit_scale()
    assert math.isclose(model.logit_scale.item(), LOGIT_SCALE_MAX, rel_tol=1e-6)
    frozen = build_model(ModelConfig(**{**TINY.__dict__, "freeze_logit_scale": True}), seed=0)
    assert not frozen.logit_scale.requires_grad


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    before = torch.get_rng_state()
    first, second = build_model(TINY, seed=3), build_model(TINY, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    other = build_model(TINY, seed=4)
    assert not torch.equal(first.ecg_encoder.fc.weight, other.ecg_encoder.fc.weight)


def test_cxr_weights_load_from_a_local_torchvision_state_dict(tmp_path: Path) -> None:
    source = resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    config = ModelConfig(**{**TINY.__dict__, "cxr_arch": "resnet18"})
    model = build_model(config, seed=0, cxr_weights=path)
    resnet = model.cxr_encoder.resnet
    torch.testing.assert_close(resnet.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    # The RGB stem becomes a grey-scale one by summing over its input channels.
    torch.testing.assert_close(resnet.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert resnet.fc.out_features == 16  # our projection, not ImageNet's 1000 classes


def test_cxr_weights_of_another_architecture_or_a_bad_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(CXRWeightsError, match="does not match"):
        build_model(TINY, seed=0, cxr_weights=path)  # TINY's CXR is resnet_tiny
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CXRWeightsError, match=re.escape(str(broken))):
        build_model(ModelConfig(**{**TINY.__dict__, "cxr_arch": "resnet18"}), cxr_weights=broken)


def test_encoder_weights_start_the_encoders_from_a_state_dict_or_a_checkpoint(
    tmp_path: Path,
) -> None:
    """A pretrained model's encoders (a state dict, or a run checkpoint holding one under
    "model") start a new model's; its projections and logit scale keep their own init."""
    source = build_model(TINY, seed=1)
    encoders_only = {k: v for k, v in source.state_dict().items() if "_encoder." in k}
    plain, checkpoint = tmp_path / "encoders.pt", tmp_path / "best.pt"
    torch.save(encoders_only, plain)
    torch.save({"model": source.state_dict(), "step": 7, "optimizer": {}}, checkpoint)
    fresh = build_model(TINY, seed=0)
    for path in (plain, checkpoint):
        model = build_model(TINY, seed=0, encoder_weights=path)
        for name, value in model.state_dict().items():
            expected = (
                source.state_dict()[name] if "_encoder." in name else fresh.state_dict()[name]
            )
            assert torch.equal(value, expected), (path.name, name)
    # A file holding only the ECG encoder starts that one alone.
    ecg_only = tmp_path / "ecg.pt"
    torch.save({k: v for k, v in encoders_only.items() if k.startswith("ecg_encoder.")}, ecg_only)
    model = build_model(TINY, seed=0, encoder_weights=ecg_only)
    assert torch.equal(model.ecg_encoder.fc.weight, source.ecg_encoder.fc.weight)
    for mine, theirs in zip(
        model.labs_encoder.parameters(), fresh.labs_encoder.parameters(), strict=True
    ):
        assert torch.equal(mine, theirs)


def test_encoder_weights_that_do_not_fit_are_refused_naming_the_file(tmp_path: Path) -> None:
    other = build_model(ModelConfig(**{**TINY.__dict__, "embed_dim": 32}), seed=0)
    wrong_shape = tmp_path / "d32.pt"
    torch.save(other.state_dict(), wrong_shape)
    with pytest.raises(WeightsError, match=re.escape(str(wrong_shape)) + ".*ecg_encoder does not"):
        build_model(TINY, seed=0, encoder_weights=wrong_shape)
    no_encoders = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, no_encoders)
    with pytest.raises(WeightsError, match="holds no encoder weights"):
        build_model(TINY, seed=0, encoder_weights=no_encoders)
    text = tmp_path / "notes.pt"
    text.write_text("not torch")
    with pytest.raises(WeightsError, match=re.escape(str(text)) + ": not a state dict"):
        build_model(TINY, seed=0, encoder_weights=text)
    assert issubclass(CXRWeightsError, WeightsError)


def test_build_model_gives_each_arch_behind_the_common_base() -> None:
    ours = build_model(TINY)
    reference = build_model(ModelConfig(arch="symile_mimic_reference", embed_dim=8, n_labs=5))
    assert isinstance(ours, SymileModel) and isinstance(reference, SymileMIMICReference)
    assert isinstance(ours, ThreeModalityModel) and isinstance(reference, ThreeModalityModel)


def test_a_reference_state_dict_tells_its_shape_and_another_names_what_it_lacks() -> None:
    reference = SymileMIMICReference(embed_dim=8, n_labs=5, logit_scale_init=-3.0)
    state = reference.state_dict()
    assert reference_shape(state) == ReferenceShape(embed_dim=8, n_labs=5, logit_scale=-3.0)
    with pytest.raises(KeyError, match=r"labs_encoder\.fc3\.weight"):
        reference_shape(build_model(TINY).state_dict())  # our model: not the reference's
    del state["logit_scale"]
    with pytest.raises(KeyError, match="logit_scale"):
        reference_shape(state)


def test_objective_heads_are_submodules_built_after_the_encoders() -> None:
    plain = build_model(TINY, seed=0)
    assert plain.gate is None and plain.matching_head is None
    headed = build_model(
        ModelConfig(**{**TINY.__dict__, "gate_dim": 4, "matching_hidden": 6}), seed=0
    )
    state, plain_state = headed.state_dict(), plain.state_dict()
    # The encoders start as they would without heads: the heads draw after them.
    for name, tensor in plain_state.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
    extra = sorted(set(state) - set(plain_state))
    assert extra and all(k.startswith(("gate.", "matching_head.")) for k in extra)
    assert {p for p in headed.parameters()} >= set(headed.gate.parameters())
    # A model without heads (every checkpoint before them) loads into the same config.
    build_model(TINY).load_state_dict(plain_state)
    with pytest.raises(ValueError, match="gate_dim"):
        ModelConfig(gate_dim=-1)
