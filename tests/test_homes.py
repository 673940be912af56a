"""The shared homes: atomic writes, the error base and its exit codes, DatasetDir, RunDir."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from _dataset_factory import write_dataset, write_tiny_config

from symile_clinical.cli import main
from symile_clinical.errors import EXIT_BAD_INPUT, EXIT_USAGE, SymileClinicalError, UsageError
from symile_clinical.formats.atomic import (
    atomic_directory,
    atomic_path,
    write_json_atomic,
    write_text_atomic,
)
from symile_clinical.formats.dataset_dir import DatasetDir, DatasetError, cxr_to_unit
from symile_clinical.formats.run_config import Augmentation, ConfigError
from symile_clinical.formats.run_dir import RunDir, RunError
from symile_clinical.training.config import fit_model_to_data, load_config

# config.json as a run wrote it before augmentation was nested (flat augment_* keys), its
# dataset recorded relative to the run ("../dataset"), as older runs did.
OLD_RUN_CONFIG = Path(__file__).parent / "old_formats" / "run_config.json"


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "x.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_json_is_strict_nan_is_null_numpy_is_plain(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "m.json", {"x": float("nan"), "y": np.arange(2)})
    assert json.loads(path.read_text()) == {"x": None, "y": [0, 1]}


def test_atomic_directory_replaces_or_keeps_the_first_commit(tmp_path: Path) -> None:
    target = tmp_path / "shard"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    with atomic_directory(target, replace=False) as staging:
        (staging / "a").write_text("2")
    assert (target / "a").read_text() == "1"  # an existing commit wins without replace
    with atomic_directory(target) as staging:
        (staging / "a").write_text("3")
    assert (target / "a").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard"]


def test_every_error_names_its_path_and_reason() -> None:
    error = DatasetError(Path("/d/dataset.json"), "missing")
    assert isinstance(error, SymileClinicalError) and str(error) == "/d/dataset.json: missing"
    assert (error.path, error.reason, error.exit_code) == (Path("/d/dataset.json"), "missing", 1)
    assert UsageError("--p", "in [0, 1]").exit_code == EXIT_USAGE


def test_the_cli_exit_codes_follow_one_rule(tmp_path: Path) -> None:
    # An input that cannot be used: 1, for any command that reads it.
    for command in (["evaluate", "--run"], ["index", "--run"]):
        assert main([*command, str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    # A value no input could satisfy: 2.
    assert main(["reproduce-xor", "--p", "2"]) == EXIT_USAGE
    with pytest.raises(SystemExit) as stopped:  # argparse's own usage errors
        main(["evaluate", "--no-such-option"])
    assert stopped.value.code == EXIT_USAGE


def test_dataset_dir_names_its_files_and_checks_labs(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", n_train=8, n_val=8, n_test=8, n_labs=3, ecg_samples=100)
    dataset = DatasetDir(root)
    assert dataset.is_complete() and dataset.dataset_json_path == root / "dataset.json"
    assert dataset.array_path("val", "cxr") == root / "val" / "cxr.npy"
    assert dataset.fill_values.dtype == np.float32 and dataset.fill_values.shape == (3,)
    assert len(dataset.split("test")) == 8 and dataset.candidates("test").k == 4
    manifest = dataset.manifest("val")
    assert list(manifest["row"]) == list(range(8)) and set(manifest["split"]) == {"val"}
    assert dataset.hadm_ids("val")[0] == int(manifest.loc[0, "hadm_id"])
    info = json.loads(dataset.dataset_json_path.read_text())
    info["labs"] = info["labs"][:2]
    dataset.dataset_json_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="2 labs listed, test arrays have 3"):
        DatasetDir(root).split("test")
    with pytest.raises(DatasetError, match="not a preprocessed dataset"):
        _ = DatasetDir(tmp_path / "nothing").info


def test_stored_cxr_to_unit_is_the_one_rule() -> None:
    stored = np.array([[0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(cxr_to_unit(stored), [[0.0, 1.0]])
    assert cxr_to_unit(np.array([0.25], np.float16)).dtype == np.float32


def test_a_relative_dataset_is_recorded_absolute(tmp_path: Path, monkeypatch) -> None:
    root = write_dataset(tmp_path / "d", n_train=8, n_val=8, n_test=8, n_labs=3, ecg_samples=100)
    monkeypatch.chdir(tmp_path)
    run = RunDir("runs/r")
    run.write_config(load_config(write_tiny_config(tmp_path / "c.toml")), DatasetDir("d"))
    assert json.loads(run.config_path.read_text())["data"] == str(root)
    monkeypatch.chdir(run.path)  # from anywhere, the run still finds its dataset
    assert RunDir(tmp_path / "runs" / "r").dataset() == DatasetDir(root)


def test_run_dir_checkpoints_comparisons_and_errors(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "symile")
    with pytest.raises(ConfigError, match="not a training run directory"):
        run.read_config()
    run.checkpoints_dir.mkdir(parents=True)
    run.last_checkpoint.write_bytes(b"")
    assert run.checkpoint("best") == run.last_checkpoint  # no best.pt yet
    run.best_checkpoint.write_bytes(b"")
    assert run.checkpoint("best") == run.best_checkpoint and run.has_checkpoint()
    run.write_comparisons([("CLIP", tmp_path / "clip")])
    assert json.loads(run.compare_path.read_text()) == {
        "comparisons": [{"label": "CLIP", "run": "../clip"}]
    }
    assert run.comparisons() == [("CLIP", RunDir(tmp_path / "clip"))]
    run.compare_path.write_text("{")
    with pytest.raises(RunError, match=r"compare\.json"):
        run.comparisons()
    run.config_path.write_text(json.dumps({"objective": "symile"}))
    with pytest.raises(RunError, match="names no dataset"):
        run.dataset()


def test_a_bad_cxr_weights_file_is_an_input_error_naming_it(tmp_path: Path, caplog) -> None:
    root = write_dataset(tmp_path / "d", n_train=8, n_val=8, n_test=8, n_labs=3, ecg_samples=100)
    broken = tmp_path / "weights.pt"
    broken.write_bytes(b"not a state dict")
    toml = write_tiny_config(tmp_path / "c.toml")
    argv = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--config", str(toml)]
    with caplog.at_level("ERROR"):
        assert main([*argv, "--cxr-weights", str(broken), "--no-progress"]) == EXIT_BAD_INPUT
    assert str(broken) in caplog.text and "Traceback" not in caplog.text


def test_encoder_weights_start_a_new_run_and_a_bad_file_is_an_input_error(
    tmp_path: Path, caplog
) -> None:
    """A finished run's best.pt starts another run's encoders (a pretrained warm start); the
    resumed run reads its own checkpoint, not the file; a bad file exits 1 naming it."""
    import torch

    root = write_dataset(tmp_path / "d", n_train=32, n_val=8, n_test=8, n_labs=3, ecg_samples=100)
    toml = write_tiny_config(tmp_path / "c.toml", epochs=1)
    first = tmp_path / "first"
    argv = ["train", "--data", str(root), "--config", str(toml), "--no-progress"]
    assert main([*argv, "--out", str(first)]) == 0
    pretrained = tmp_path / "pretrained.pt"
    pretrained.write_bytes(RunDir(first).best_checkpoint.read_bytes())
    second = tmp_path / "second"
    # lr 1e-12: one step leaves the started weights where they were, to float precision.
    started = [*argv, "--out", str(second), "--encoder-weights", str(pretrained), "--lr", "1e-12"]
    assert main([*started, "--max-steps", "1", "--seed", "5"]) == 0
    assert RunDir(second).read_config().encoder_weights == str(pretrained)
    source = torch.load(RunDir(first).best_checkpoint, weights_only=True)["model"]
    after = torch.load(RunDir(second).last_checkpoint, weights_only=True)["model"]
    for name, value in after.items():
        if "_encoder." in name and value.is_floating_point():
            torch.testing.assert_close(value, source[name], rtol=0, atol=1e-6)
    pretrained.unlink()  # resuming needs only the run's own checkpoint
    assert main(["train", "--out", str(second), "--resume", "--no-progress"]) == 0
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a state dict")
    with caplog.at_level("ERROR"):
        code = main([*argv, "--out", str(tmp_path / "third"), "--encoder-weights", str(broken)])
    assert code == EXIT_BAD_INPUT
    assert str(broken) in caplog.text and "Traceback" not in caplog.text


def test_an_old_run_config_with_flat_augment_keys_opens_and_trains(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "dataset", n_train=32, n_val=8, n_labs=3, ecg_samples=100)
    dataset = DatasetDir(root)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    shutil.copyfile(OLD_RUN_CONFIG, run.config_path)
    assert "augment_ecg_shift" in json.loads(run.config_path.read_text())
    config = run.read_config()
    amounts = Augmentation(ecg_shift=10, ecg_gain=0.1, cxr_shift=2, lab_noise=0.05)
    assert config.augmentation == amounts
    recipe = write_tiny_config(tmp_path / "c.toml", epochs=1, augmentation=vars(amounts))
    assert config == fit_model_to_data(load_config(recipe), dataset.split("train"))
    assert run.dataset() == dataset
    # --resume takes the run's own (old-style) config: it matches what training builds.
    assert main(["train", "--out", str(run.path), "--resume", "--no-progress"]) == 0
    assert run.load("best").config == config
