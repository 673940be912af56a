"""`symile-clinical import-release` and `symile-clinical compare-cohort`: the published
Symile-MIMIC release (tensors + the authors' checkpoint) as a dataset and a run directory.

import-release writes OUT/dataset (preprocessing.symile_mimic_release: the release's tensors in our
dataset format) and OUT/run (a run directory: config.json building the reference
architecture, models/reference_mimic.py, and checkpoints/best.pt holding the authors'
weights, read from their Lightning checkpoint without running pickled code), so that
`evaluate`, `index` and `app` work on it unchanged. compare-cohort tells a user who also
ran our `preprocess` on real MIMIC how the two cohorts agree.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RELEASE_PRESET = "symile-mimic-release"


def reference_config(state_dict: dict[str, Any], hyper: dict[str, Any], source: Path) -> Any:
    """The TrainConfig of a reference checkpoint: the reference architecture shaped by its
    weights (d, number of labs) and the objective of its hyper_parameters."""
    from models import ModelConfig
    from models.reference_mimic import REFERENCE_CXR_SIZE, reference_shape
    from symile_clinical.formats.lightning_checkpoint import LightningCheckpointError
    from symile_clinical.formats.run_config import TrainConfig

    try:
        shape = reference_shape(state_dict)
    except KeyError as error:
        raise LightningCheckpointError(
            source, f"not a Symile-MIMIC reference model (no {error.args[0]})"
        ) from error
    objective = str(hyper.get("loss_fn", "symile"))
    if objective not in ("symile", "clip"):
        raise LightningCheckpointError(source, f"loss_fn {objective!r}: symile or clip expected")
    negatives = str(hyper.get("negative_sampling", "n"))
    model = ModelConfig(
        arch="symile_mimic_reference",
        embed_dim=shape.embed_dim,
        projection="layernorm",
        n_labs=shape.n_labs,
        cxr_size=REFERENCE_CXR_SIZE,
        ecg_samples=5000,
        logit_scale_init=float(hyper.get("logit_scale_init", shape.logit_scale)),
        freeze_logit_scale=bool(hyper.get("freeze_logit_scale", False)),
    )
    lr = hyper.get("lr")
    return TrainConfig(
        model=model,
        preset=RELEASE_PRESET,
        objective=objective,
        negatives=negatives if negatives in ("n", "n_squared") else "n",
        lr=float(lr) if isinstance(lr, int | float) and lr > 0 else TrainConfig.lr,
        weight_decay=float(hyper.get("weight_decay", TrainConfig.weight_decay)),
    )


def import_release_run(checkpoint: Path, run_dir: Path, dataset: Any) -> Any:
    """OUT/run from the authors' checkpoint: config.json + checkpoints/best.pt, the weights
    loaded strictly into the reference architecture first. Skipped when already written."""
    from models import build_model
    from symile_clinical.formats.checkpoint import CHECKPOINT_FORMAT, file_sha256, save_checkpoint
    from symile_clinical.formats.lightning_checkpoint import (
        LightningCheckpointError,
        read_lightning_checkpoint,
    )
    from symile_clinical.formats.run_dir import RunDir

    run = RunDir(run_dir)
    if run.has_config() and run.best_checkpoint.is_file():
        log.info("%s already holds the imported model", run.path)
        return run
    content = read_lightning_checkpoint(checkpoint)
    config = reference_config(content.state_dict, content.hyper_parameters, checkpoint)
    if config.model.n_labs != dataset.n_labs:
        raise LightningCheckpointError(
            checkpoint,
            f"the model takes {config.model.n_labs} labs, {dataset.dataset_json_path} lists "
            f"{dataset.n_labs}",
        )
    model = build_model(config.model)
    try:
        model.load_state_dict(content.state_dict, strict=True)
    except RuntimeError as error:
        raise LightningCheckpointError(
            checkpoint, f"does not fit the Symile-MIMIC reference architecture: {error}"
        ) from error
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "source": {
            "kind": "lightning checkpoint",
            "file": str(Path(checkpoint).absolute()),
            "sha256": file_sha256(checkpoint),
            "epoch": content.epoch,
            "global_step": content.global_step,
            "lightning_version": content.lightning_version,
            "hyper_parameters": content.hyper_parameters,
        },
    }
    save_checkpoint(run.best_checkpoint, state, keep_previous=False)
    run.write_config(config, dataset)  # last: its presence means the run is complete
    log.info("wrote %s (d = %d, %s)", run.path, config.model.embed_dim, config.objective)
    return run
