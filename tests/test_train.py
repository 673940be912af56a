"""The trainer's parts and short real training runs on a small planted dataset."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _dataset_factory import write_dataset, write_tiny_config
from torch.utils.data import DataLoader

from symile_clinical.cli import main
from symile_clinical.evaluation.embedding import SplitEmbeddings, embed_split
from symile_clinical.formats.checkpoint import load_checkpoint
from symile_clinical.formats.dataset_dir import DatasetDir, DatasetError, SplitArrays
from symile_clinical.formats.run_config import (
    Augmentation,
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
)
from symile_clinical.formats.run_dir import RunDir, load_run
from symile_clinical.objective.similarity import score_fn
from symile_clinical.training.augment import drop_labs
from symile_clinical.training.config import demo_config, load_config, paper_config
from symile_clinical.training.memmap_dataset import MemmapDataset
from symile_clinical.training.trainer import (
    GlobalBatchSampler,
    RunExistsError,
    WarmupCosine,
    retrieval_accuracy,
    train,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("data") / "dataset", n_train=64, n_val=24, ecg_samples=1000
    )


def _events(run_dir: Path, event: str) -> list[dict]:
    lines = RunDir(run_dir).metrics_log.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


# -- configuration ---------------------------------------------------------------------------


def test_presets_match_the_issue() -> None:
    paper = paper_config()
    assert paper.model.cxr_arch == "resnet50" and paper.model.cxr_size == 320
    assert paper.model.ecg_channels == (64, 128, 256, 512)
    assert paper.model.ecg_blocks == (2, 2, 2, 2)
    assert paper.weight_decay == 0.01
    demo = demo_config()
    assert demo.model.cxr_size < paper.model.cxr_size
    assert demo.objective == "symile" and demo.negatives == "conditional"
    assert demo.model.projection == "layernorm" and demo.model.projection_offset == 1.0
    assert paper.model.projection == "layernorm" and paper.negatives == "n_squared"
    clip = load_config("demo-clip")
    assert clip.objective == "clip" and clip.model.projection == "l2"
    assert math.isclose(clip.model.logit_scale_init, 2.65926, abs_tol=1e-5)
    assert clip.model.cxr_arch == demo.model.cxr_arch and clip.epochs == demo.epochs
    assert load_config("demo") == demo


def test_demo_presets_are_the_variants_the_recipe_search_chose() -> None:
    """The presets are exactly the search's winners (docs/diagnosis.md), so rerunning
    `benchmarks/recipe_search.py search` measures the shipped recipes."""
    from benchmarks.recipe_search import CHOSEN, variant_config

    for preset, variant in CHOSEN.items():
        searched = variant_config(variant, seed=0)
        shipped = load_config(preset)
        assert dataclasses.replace(searched, preset=preset, device=shipped.device) == shipped


def test_config_round_trips_through_json() -> None:
    config = paper_config()
    values = json.loads(json.dumps({**config_to_dict(config), "data": "/somewhere"}))
    assert config_from_dict(values) == config
    augmented = demo_config()
    values = config_to_dict(augmented)
    assert (values["augmentation"]["ecg_shift"], values["augmentation"]["cxr_shift"]) == (500, 4)
    assert not any(key.startswith("augment_") for key in values)  # one spelling is written
    assert config_from_dict(json.loads(json.dumps(values))) == augmented


def test_new_objectives_presets_start_from_demo() -> None:
    """demo-gram, demo-triangle, demo-gated-symile: demo's size (not yet chosen on
    validation), each with its objective and heads, unit vectors."""
    demo = demo_config()
    for objective in ("gram", "triangle", "gated-symile"):
        config = load_config(f"demo-{objective}")
        assert config.objective == objective and config.preset == f"demo-{objective}"
        assert (config.epochs, config.batch_size, config.augmentation) == (
            demo.epochs,
            demo.batch_size,
            demo.augmentation,
        )
        same_encoders = ("ecg_channels", "ecg_stem_stride", "cxr_arch", "cxr_size", "embed_dim")
        for name in same_encoders:
            assert getattr(config.model, name) == getattr(demo.model, name), name
        assert config.model.projection == "l2"
        assert (config.model.gate_dim > 0) == (objective == "gated-symile")
        assert (config.model.matching_hidden > 0) == (objective == "gram")


def test_cli_objective_choices_are_the_schemas() -> None:
    from symile_clinical.commands.train import OBJECTIVE_CHOICES
    from symile_clinical.formats.run_config import OBJECTIVES

    assert OBJECTIVE_CHOICES == OBJECTIVES


def test_presets_keep_their_augmentation() -> None:
    chosen = Augmentation(ecg_shift=500, ecg_gain=0.1, cxr_shift=4)
    assert demo_config().augmentation == load_config("demo-clip").augmentation == chosen
    assert not paper_config().augmentation.enabled


def test_augmentation_reads_nested_or_flat_and_overrides_a_preset(tmp_path: Path) -> None:
    nested = tmp_path / "nested.toml"
    nested.write_text('preset = "demo"\n[augmentation]\nlab_noise = 0.1\n')
    flat = tmp_path / "flat.toml"  # how recipes spelt it before the nested table
    flat.write_text('preset = "demo"\naugment_lab_noise = 0.1\n')
    expected = dataclasses.replace(demo_config().augmentation, lab_noise=0.1)
    assert load_config(nested).augmentation == load_config(flat).augmentation == expected
    both = tmp_path / "both.toml"
    both.write_text("augment_ecg_shift = 3\n[augmentation]\necg_shift = 4\n")
    with pytest.raises(ConfigError, match="both given") as info:
        load_config(both)
    assert str(both) in str(info.value)


def test_toml_file_overrides_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('preset = "demo"\nepochs = 2\nobjective = "clip"\n[model]\nembed_dim = 32\n')
    config = load_config(path)
    assert (config.epochs, config.objective, config.model.embed_dim) == (2, "clip", 32)
    assert config.model.cxr_arch == demo_config().model.cxr_arch


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("epochs = 2\nbogus = 1\n", "unknown TrainConfig field"),
        ("[model]\nwidth = 3\n", "unknown ModelConfig field"),
        ("[augmentation]\necg_roll = 3\n", "unknown Augmentation field"),
        ("augment_ecg_roll = 3\n", "unknown TrainConfig field"),
        ('objective = "triplet"\n', "objective must be one of"),
        ("epochs = \n", "invalid TOML"),
    ],
)
def test_bad_config_files_name_file_and_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("huge")


# -- data ------------------------------------------------------------------------------------


def test_memmap_dataset_yields_model_ready_tensors(dataset: Path) -> None:
    raw_ecg = np.load(dataset / "val" / "ecg.npy")
    raw_cxr = np.load(dataset / "val" / "cxr.npy")
    raw_observed = np.load(dataset / "val" / "labs_observed.npy")
    item = MemmapDataset(dataset, "val")[5]
    assert item["ecg"].dtype == torch.float32 and item["cxr"].dtype == torch.float32
    np.testing.assert_array_equal(item["ecg"].numpy(), raw_ecg[5].astype(np.float32))
    np.testing.assert_allclose(item["cxr"].numpy(), raw_cxr[5] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(item["labs_observed"].numpy(), raw_observed[5])
    assert int(item["row"]) == 5
    arrays = SplitArrays(dataset, "val")
    assert isinstance(arrays.ecg, np.memmap)
    batch = arrays.batch([7, 2, 5])
    assert batch["row"].tolist() == [7, 2, 5]
    torch.testing.assert_close(batch["cxr"][2], item["cxr"])


def test_dataloader_workers_reopen_the_memmaps(dataset: Path) -> None:
    data = MemmapDataset(dataset, "val")
    assert pickle.loads(pickle.dumps(data))._arrays is None  # no array contents pickled
    loader = DataLoader(data, batch_size=8, num_workers=2)
    rows = torch.cat([batch["row"] for batch in loader])
    assert rows.tolist() == list(range(24))
    first = next(iter(loader))
    torch.testing.assert_close(first["ecg"][3], data[3]["ecg"])


def test_inconsistent_split_is_a_dataset_error(dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "train").mkdir(parents=True)
    for name in ("ecg", "labs", "labs_observed", "cxr"):
        array = np.load(dataset / "train" / f"{name}.npy")
        np.save(broken / "train" / f"{name}.npy", array[:10] if name == "labs" else array)
    with pytest.raises(DatasetError, match="row counts differ"):
        SplitArrays(broken, "train")
    with pytest.raises(DatasetError, match=r"cxr\.npy"):
        (broken / "train" / "cxr.npy").unlink()
        SplitArrays(broken, "train")


def test_candidate_sets_match_the_parquet(dataset: Path) -> None:
    sets = DatasetDir(dataset).candidates("val")
    assert sets.candidate_rows.shape == (24, 4)
    np.testing.assert_array_equal(
        sets.candidate_rows[np.arange(24), sets.true_position], sets.query_rows
    )


# -- trainer parts ---------------------------------------------------------------------------


def test_ranks_together_see_exactly_the_single_process_batches() -> None:
    single = list(GlobalBatchSampler(50, 8, rank=0, world_size=1, seed=3, epoch=2))
    assert len(single) == 6 and all(len(b) == 8 for b in single)
    ranks = [list(GlobalBatchSampler(50, 8, r, 2, seed=3, epoch=2)) for r in range(2)]
    joined = [a + b for a, b in zip(*ranks, strict=True)]
    assert joined == single
    resumed = list(GlobalBatchSampler(50, 8, 0, 1, seed=3, epoch=2, skip=4))
    assert resumed == single[4:]
    other_epoch = list(GlobalBatchSampler(50, 8, 0, 1, seed=3, epoch=3))
    assert other_epoch != single


def test_warmup_then_cosine() -> None:
    schedule = WarmupCosine(warmup=4, total=14, floor=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(schedule(9), 0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert math.isclose(schedule(14), 0.1) and math.isclose(schedule(100), 0.1)


def test_lab_dropout_hides_only_observed_labs_and_fills_them() -> None:
    g = torch.Generator().manual_seed(0)
    labs = torch.rand(400, 6, generator=g)
    observed = (torch.rand(400, 6, generator=g) > 0.3).float()
    fill = torch.linspace(0.1, 0.6, 6)
    new_labs, new_observed = drop_labs(labs, observed, fill, 0.5, torch.Generator().manual_seed(1))
    dropped = (observed == 1) & (new_observed == 0)
    assert not ((observed == 0) & (new_observed == 1)).any()
    assert 0.4 < dropped.sum() / (observed == 1).sum() < 0.6
    torch.testing.assert_close(new_labs[dropped], fill.expand_as(labs)[dropped])
    torch.testing.assert_close(new_labs[~dropped], labs[~dropped])
    # Two ranks drawing for the global batch drop what one process drops.
    parts = [
        drop_labs(labs[r * 200 : (r + 1) * 200], observed[r * 200 : (r + 1) * 200], fill, 0.5,
                  torch.Generator().manual_seed(1), rank=r, world_size=2)[1]
        for r in range(2)
    ]  # fmt: skip
    torch.testing.assert_close(torch.cat(parts), new_observed)


@pytest.mark.parametrize("objective", ["symile", "clip"])
def test_retrieval_accuracy_equals_a_per_query_loop(objective: str, dataset: Path) -> None:
    sets = DatasetDir(dataset).candidates("val")
    g = torch.Generator().manual_seed(0)
    embs = tuple(torch.randn(24, 8, generator=g) for _ in range(3))
    correct = []
    for q, rows, true in zip(sets.query_rows, sets.candidate_rows, sets.true_position, strict=True):
        rows = torch.as_tensor(np.array(rows))
        scores = score_fn(objective)(embs[2][rows], [embs[0][q : q + 1], embs[1][q : q + 1]])
        correct.append(int(scores.argmax()) == true)
    split_embs = SplitEmbeddings(*(e.numpy() for e in embs))
    assert retrieval_accuracy(split_embs, sets, objective) == pytest.approx(np.mean(correct))


# -- training runs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "negatives"),
    [("symile", "n"), ("symile", "n_squared"), ("clip", "n"), ("clip", "n_squared")],
)
def test_a_few_steps_lower_the_loss_and_the_checkpoint_reloads(
    objective: str, negatives: str, dataset: Path, tmp_path: Path
) -> None:
    config = load_config(
        write_tiny_config(tmp_path / "c.toml", objective=objective, negatives=negatives, epochs=2)
    )
    run_dir = tmp_path / "run"
    result = train(config, dataset, run_dir, progress=False)
    assert result.steps == 8 and result.epochs_completed == 2
    losses = [e["loss"] for e in _events(run_dir, "train")]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])

    # The best checkpoint reloads into a model that embeds as the trainer's model did: the
    # val accuracy recomputed from its embeddings equals the one logged during training.
    loaded = load_run(run_dir, "best")
    assert loaded.objective == objective and not loaded.model.training
    assert loaded.config.model.n_labs == 6  # taken from the dataset
    embs = embed_split(loaded.model, SplitArrays(dataset, "val"), torch.device("cpu"), 32)
    best = max(e["val_acc"] for e in _events(run_dir, "val"))
    sets = DatasetDir(dataset).candidates("val")
    assert retrieval_accuracy(embs, sets, objective, seed=config.seed) == best
    again = embed_split(load_run(run_dir, "best").model, SplitArrays(dataset, "val"), "cpu", 7)
    for modality in ("ecg", "labs", "cxr"):
        a, b = getattr(embs, modality), getattr(again, modality)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_training_learns_the_planted_relation(tmp_path: Path) -> None:
    data = write_dataset(
        tmp_path / "data", n_train=128, n_val=48, n_classes=4, seed=1, ecg_samples=1000
    )
    config = load_config(
        write_tiny_config(tmp_path / "c.toml", epochs=5, batch_size=32, lab_dropout=0.1)
    )
    result = train(config, data, tmp_path / "run", progress=False)
    # Chance is 1/4 (sd 0.06 over 48 queries); a model that knows the 4 classes gets ~0.68.
    assert result.best_val_acc is not None and result.best_val_acc >= 0.42
    logit_scales = [e["logit_scale"] for e in _events(tmp_path / "run", "train")]
    assert max(logit_scales) <= 100.0 + 1e-4


def test_bf16_autocast_trains_on_cpu(dataset: Path, tmp_path: Path) -> None:
    config = load_config(write_tiny_config(tmp_path / "c.toml", precision="bf16", max_steps=3))
    result = train(config, dataset, tmp_path / "run", progress=False)
    assert result.steps == 3
    assert all(math.isfinite(e["loss"]) for e in _events(tmp_path / "run", "train"))


def test_early_stopping_and_frozen_logit_scale(dataset: Path, tmp_path: Path) -> None:
    config = load_config(
        write_tiny_config(
            tmp_path / "c.toml", epochs=30, lr=1e-9, patience=2, model={"freeze_logit_scale": True}
        )
    )
    result = train(config, dataset, tmp_path / "run", progress=False)
    # With a negligible learning rate val accuracy cannot keep improving.
    assert result.stopped_early and result.epochs_completed < 30
    scales = [e["logit_scale"] for e in _events(tmp_path / "run", "train")]
    assert scales == [pytest.approx(math.exp(2.65926), rel=1e-5)] * len(scales)


def test_cli_trains_and_refuses_to_overwrite_a_run(dataset: Path, tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path / "c.toml", max_steps=2)
    run_dir = tmp_path / "run"
    args = ["train", "--data", str(dataset), "--out", str(run_dir), "--config", str(config)]
    assert main([*args, "--no-progress", "--projection", "layernorm"]) == 0
    recorded = json.loads(RunDir(run_dir).config_path.read_text())
    assert recorded["model"]["projection"] == "layernorm"
    assert recorded["data"] == str(dataset)
    assert set(load_checkpoint(RunDir(run_dir).last_checkpoint)) >= {
        "model", "optimizer", "scheduler", "scaler", "rng", "progress"
    }  # fmt: skip
    assert main([*args, "--no-progress"]) == 1  # exists, no --resume
    with pytest.raises(RunExistsError):
        train(TrainConfig(), dataset, run_dir)


def test_a_relative_data_path_is_recorded_absolute_and_resume_finds_it(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_tiny_config(tmp_path / "c.toml", max_steps=2)
    run_dir = tmp_path / "run"
    monkeypatch.chdir(dataset.parent)
    args = ["train", "--data", dataset.name, "--out", str(run_dir), "--config", str(config)]
    assert main([*args, "--no-progress"]) == 0
    assert RunDir(run_dir).recorded_dataset() == DatasetDir(dataset)
    assert json.loads(RunDir(run_dir).config_path.read_text())["data"] == str(dataset)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resume = ["train", "--out", str(run_dir), "--resume", "--no-progress"]
    assert main(resume) == 0  # the run's own config and dataset, found through RunDir
    assert main([*resume, "--lr", "0.1"]) == 2  # --resume takes no other flags
    assert main(["train", "--out", str(tmp_path / "new"), "--no-progress"]) == 2  # no --data
