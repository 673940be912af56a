"""Data-parallel training under torchrun (two gloo processes) equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _dataset_factory import write_dataset, write_tiny_config

from models import build_model
from symile_clinical.formats.checkpoint import load_checkpoint
from symile_clinical.formats.run_dir import RunDir, load_run
from symile_clinical.training.config import load_config
from symile_clinical.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _train_events(run_dir: Path) -> list[dict]:
    records = map(json.loads, RunDir(run_dir).metrics_log.read_text().splitlines())
    return [r for r in records if r["event"] == "train"]


def _one_and_two_processes(data: Path, config_file: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The same recipe trained by one process and by two gloo processes under torchrun."""
    single = tmp_path / "single"
    train(load_config(config_file), data, single, progress=False)

    double = tmp_path / "double"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "symile_clinical", "train"]
    command += ["--data", str(data), "--out", str(double), "--config", str(config_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return single, double


def _assert_same_training(single: Path, double: Path, steps: int = 3) -> None:
    one = load_checkpoint(RunDir(single).last_checkpoint)
    two = load_checkpoint(RunDir(double).last_checkpoint)
    assert one["progress"]["step"] == two["progress"]["step"] == steps
    # Every step's global loss and gradient norm (before clipping) agree to rounding...
    logged = [_train_events(run) for run in (single, double)]
    assert [e["step"] for e in logged[1]] == list(range(1, steps + 1))
    for a, b in zip(*logged, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    # ... and so do the weights. Adam divides each gradient entry by its own magnitude, so an
    # entry whose gradient is at rounding level (conv weights in front of a GroupNorm, which
    # is scale-invariant) moves by up to ~lr in either run: compare to that scale.
    initial = build_model(load_run(single).config.model, seed=0).state_dict()
    moved = 0
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=0, atol=3e-4, msg=name)
        moved += int(not torch.equal(initial[name], tensor))
    assert moved > 10  # the weights did train


@pytest.mark.slow
@pytest.mark.parametrize("negatives", ["n", "n_squared", "conditional"])
def test_two_gloo_processes_match_one_process(negatives: str, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=32, n_val=8, ecg_samples=1000)
    # GroupNorm everywhere, so no statistic depends on how the batch is split; lab dropout,
    # augmentation and the "n" shuffles draw for the global batch on every rank.
    config_file = write_tiny_config(
        tmp_path / "c.toml",
        batch_size=8,
        max_steps=3,
        lab_dropout=0.3,
        negatives=negatives,
        augmentation={"ecg_shift": 100, "ecg_gain": 0.1, "cxr_shift": 2},
    )
    _assert_same_training(*_one_and_two_processes(data, config_file, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["gram", "gated-symile"])
def test_two_gloo_processes_match_one_process_for_the_heads(objective: str, tmp_path: Path) -> None:
    """GRAM's matching head (hard negatives drawn for the global batch) and Gated Symile's
    gate (run inside the DDP-wrapped forward, labs flagged missing after lab dropout) train
    the same on two ranks as on one."""
    data = write_dataset(tmp_path / "data", n_train=32, n_val=8, ecg_samples=1000, missing_rate=0.6)
    config_file = write_tiny_config(
        tmp_path / "c.toml", objective=objective, batch_size=8, max_steps=3, lab_dropout=0.5
    )
    single, double = _one_and_two_processes(data, config_file, tmp_path)
    _assert_same_training(single, double)
    head = "gate." if objective == "gated-symile" else "matching_head."
    assert any(k.startswith(head) for k in load_checkpoint(RunDir(double).last_checkpoint)["model"])
