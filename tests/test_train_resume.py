"""Checkpoints: a run killed and resumed ends bit-identical; corrupt files give typed errors."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from _dataset_factory import write_dataset, write_tiny_config

from symile_clinical.formats.checkpoint import (
    CheckpointError,
    load_checkpoint,
    previous_path,
    save_checkpoint,
)
from symile_clinical.formats.run_config import ConfigError
from symile_clinical.formats.run_dir import RunDir, load_run
from symile_clinical.training.config import load_config
from symile_clinical.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("data") / "dataset", n_train=48, n_val=16, ecg_samples=1000
    )


def _config_file(tmp_path: Path) -> Path:
    # 3 steps per epoch, 2 epochs; every source of randomness in play: dropout layers, lab
    # dropout, ECG and CXR augmentation, the "n" negatives' shuffles, the data order.
    return write_tiny_config(
        tmp_path / "c.toml",
        epochs=2,
        negatives="n",
        lab_dropout=0.3,
        # The noise kinds draw from a generator of their own on the batch's device.
        augmentation={
            "ecg_shift": 100,
            "ecg_gain": 0.1,
            "cxr_shift": 2,
            "ecg_noise": 0.02,
            "cxr_gain": 0.1,
            "lab_noise": 0.05,
        },
        checkpoint_every=2,
        model={"ecg_dropout": 0.2, "labs_dropout": 0.2},
    )


def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}/{index}")
    else:
        assert a == b, where


@pytest.mark.slow
def test_killed_and_resumed_run_ends_bit_identical(dataset: Path, tmp_path: Path) -> None:
    config_file = _config_file(tmp_path)
    config = load_config(config_file)
    whole = tmp_path / "whole"
    train(config, dataset, whole, progress=False)

    # The same run in a subprocess that SIGKILLs itself after step 5 (checkpoints were
    # written at steps 2, 3 (epoch end) and 4), then resumed here.
    broken = tmp_path / "broken"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    command = [sys.executable, "-m", "symile_clinical", "train", "--data", str(dataset)]
    command += ["--out", str(broken), "--config", str(config_file), "--no-progress"]
    killed = subprocess.run(
        [*command, "--stop-after-steps", "5"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(RunDir(broken).last_checkpoint)["progress"]["step"] == 4
    train(config, dataset, broken, resume=True, progress=False)

    final_whole = load_checkpoint(RunDir(whole).last_checkpoint)
    final_resumed = load_checkpoint(RunDir(broken).last_checkpoint)
    assert final_whole["progress"]["step"] == 6
    for part in ("model", "optimizer", "scheduler", "rng", "progress"):
        _assert_same_tensors(final_whole[part], final_resumed[part], part)
    # The log holds each step once: the killed run's step 5 was replaced by the resumed one.
    steps = [
        record["step"]
        for record in map(json.loads, RunDir(broken).metrics_log.read_text().splitlines())
        if record["event"] == "train"
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_checkpoints_are_replaced_keeping_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "progress": {"step": 1}})
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "progress": {"step": 2}})
    assert load_checkpoint(path)["progress"]["step"] == 2
    assert load_checkpoint(previous_path(path))["progress"]["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.prev.pt", "last.pt"]


def test_truncated_checkpoint_is_a_typed_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(100)}, "progress": {"step": 1}})
    save_checkpoint(path, {"model": {"w": torch.ones(100)}, "progress": {"step": 2}})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert info.value.path == path and str(path) in str(info.value)
    assert load_checkpoint(previous_path(path))["progress"]["step"] == 1
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


@dataclass
class _Arbitrary:
    value: int


def test_checkpoints_load_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Arbitrary(3)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)


def test_resume_falls_back_to_the_previous_checkpoint(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(write_tiny_config(tmp_path / "c.toml", epochs=2, max_steps=4))
    run_dir = tmp_path / "run"
    train(config, dataset, run_dir, progress=False)
    last = RunDir(run_dir).last_checkpoint
    last.write_bytes(last.read_bytes()[:1000])
    assert load_checkpoint(previous_path(last))["progress"]["step"] == 3  # epoch 0's end
    with caplog.at_level(logging.ERROR, logger="symile_clinical.training.trainer"):
        result = train(config, dataset, run_dir, resume=True, progress=False)
    assert str(last) in caplog.text and "truncated or corrupt" in caplog.text
    assert result.steps == 4  # step 4 was redone from the step-3 checkpoint
    assert load_checkpoint(last)["progress"]["step"] == 4


def test_resume_from_a_checkpoint_older_than_a_generator_keeps_its_fresh_seed(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A checkpoint written before the on-device noise generator existed has no state for it.
    config_file = write_tiny_config(
        tmp_path / "c.toml", epochs=2, max_steps=4, augmentation={"ecg_noise": 0.02}
    )
    config = load_config(config_file)
    run_dir = tmp_path / "run"
    train(config, dataset, run_dir, progress=False)
    last = RunDir(run_dir).last_checkpoint
    state = load_checkpoint(previous_path(last))  # epoch 0's end, step 3
    assert state["progress"]["step"] == 3 and "augment_noise" in state["rng"]
    del state["rng"]["augment_noise"]
    save_checkpoint(last, state)
    with caplog.at_level(logging.WARNING, logger="symile_clinical.training.trainer"):
        result = train(config, dataset, run_dir, resume=True, progress=False)
    assert "'augment_noise'" in caplog.text and "fresh seed" in caplog.text
    assert result.steps == 4
    assert "augment_noise" in load_checkpoint(last)["rng"]  # saved again from now on


def test_resume_with_another_config_is_refused(dataset: Path, tmp_path: Path) -> None:
    config = load_config(write_tiny_config(tmp_path / "c.toml", max_steps=1))
    train(config, dataset, tmp_path / "run", progress=False)
    other = load_config(write_tiny_config(tmp_path / "d.toml", max_steps=1, lr=0.5))
    with pytest.raises(ConfigError, match="differs"):
        train(other, dataset, tmp_path / "run", resume=True, progress=False)


def test_load_run_refuses_weights_that_do_not_fit_the_config(dataset: Path, tmp_path: Path) -> None:
    config = load_config(write_tiny_config(tmp_path / "c.toml", max_steps=1))
    run_dir = tmp_path / "run"
    train(config, dataset, run_dir, progress=False)
    loaded = load_run(run_dir)
    assert loaded.checkpoint_path.name == "best.pt" and len(loaded.checkpoint_sha256) == 64
    config_path = RunDir(run_dir).config_path
    recorded = json.loads(config_path.read_text())
    recorded["model"]["embed_dim"] = 8
    config_path.write_text(json.dumps(recorded))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_run(run_dir)
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_run(tmp_path)
