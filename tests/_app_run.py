"""Runs for the index and app tests: a small dataset (tests/_dataset_factory.py), a small
untrained model saved as a real checkpoint, a CLIP comparison run, WFDB and CSV uploads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import wfdb
from _dataset_factory import write_dataset

from models import ModelConfig, build_model
from preprocessing.layout import MIMIC_ECG_LEADS
from symile_clinical.checkpoint import save_checkpoint
from symile_clinical.config import TrainConfig
from symile_clinical.dataset_dir import DatasetDir
from symile_clinical.runs import RunDir

N_LABS = 6


def small_model_config() -> ModelConfig:
    """A model small enough to build and run in well under a second on a CPU."""
    return ModelConfig(
        embed_dim=16,
        ecg_channels=(4, 8),
        ecg_blocks=(1, 1),
        ecg_stem_stride=8,
        norm="group",
        n_labs=N_LABS,
        labs_hidden=(16,),
        cxr_arch="resnet10",
        cxr_size=32,
    )


def make_run(run_dir: Path, data_dir: Path, objective: str = "symile", seed: int = 0) -> Path:
    """A run's config and best checkpoint, of an untrained model over `data_dir`."""
    config = TrainConfig(model=small_model_config(), objective=objective, seed=seed)
    model = build_model(config.model, seed=seed)
    run = RunDir(run_dir)
    save_checkpoint(run.best_checkpoint, {"model": model.state_dict()})
    run.write_config(config, DatasetDir(data_dir))
    return run_dir


def make_runs(root: Path, n_test: int = 24) -> tuple[Path, Path, Path]:
    """(dataset, Symile run with compare.json naming the CLIP run, CLIP run)."""
    data = write_dataset(
        root / "data", n_train=8, n_val=8, n_test=n_test, n_labs=N_LABS, cxr_size=32
    )
    symile = make_run(root / "symile", data, "symile")
    clip = make_run(root / "clip", data, "clip", seed=1)
    RunDir(symile).write_comparisons([("CLIP", clip)])
    return data, symile, clip


def write_wfdb(
    folder: Path, name: str = "upload", leads: tuple[str, ...] = MIMIC_ECG_LEADS
) -> tuple[Path, Path]:
    """A 10 s, 500 Hz WFDB record (format 16, MIMIC-IV-ECG's lead order); (.hea, .dat)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    t = np.arange(5000) / 500
    beats = np.exp(-(((t % 0.8) - 0.4) ** 2) / 0.0005)  # one R wave every 0.8 s
    signal = np.stack([beats * (0.5 + 0.1 * i) for i in range(len(leads))], axis=1)
    signal += rng.normal(0, 0.02, signal.shape)
    wfdb.wrsamp(
        name,
        fs=500,
        units=["mV"] * len(leads),
        sig_name=list(leads),
        p_signal=signal,
        fmt=["16"] * len(leads),
        adc_gain=[200.0] * len(leads),
        baseline=[0] * len(leads),
        write_dir=str(folder),
    )
    return folder / f"{name}.hea", folder / f"{name}.dat"


def labs_csv(rows: list[tuple[str, str]], key: str = "itemid") -> bytes:
    """A labs CSV with columns key, value."""
    lines = [f"{key},value", *(f"{k},{v}" for k, v in rows)]
    return ("\n".join(lines) + "\n").encode()
