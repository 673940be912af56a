"""`symile-clinical import-release` and `symile-clinical compare-cohort`: the published
Symile-MIMIC release (tensors + the authors' checkpoint) as a dataset and a run directory.

import-release writes OUT/dataset (preprocessing.release: the release's tensors in our
dataset format) and OUT/run (a run directory: config.json building the reference
architecture, models/reference_mimic.py, and checkpoints/best.pt holding the authors'
weights, read from their Lightning checkpoint without running pickled code), so that
`evaluate`, `index` and `app` work on it unchanged. compare-cohort tells a user who also
ran our `preprocess` on real MIMIC how the two cohorts agree.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from symile_clinical.cli import int_at_least

log = logging.getLogger(__name__)

RELEASE_PRESET = "symile-mimic-release"


def register_import_release(subparsers: argparse._SubParsersAction) -> None:
    """Add the `import-release` subcommand."""
    parser = subparsers.add_parser(
        "import-release",
        help="import the published Symile-MIMIC release (tensors + authors' checkpoint)",
        description=(
            "Import a Symile-MIMIC release folder (PhysioNet, credentialed) into OUT/dataset "
            "(our dataset directory: the released splits, candidates as released) and OUT/run "
            "(a run directory holding the authors' model), so that evaluate, index and app "
            "work on it. Memory stays bounded (the CXRs are streamed in chunks); a killed "
            "import resumes where it stopped; a finished one is skipped."
        ),
    )
    parser.add_argument("--release", type=Path, required=True, help="the release folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="the authors' Lightning checkpoint (default RELEASE/symile_mimic_model.ckpt)",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int_at_least(1),
        default=32,
        help="CXRs converted at a time (default 32: about 40 MB of float32)",
    )
    parser.set_defaults(run=run_import_release)


def register_compare_cohort(subparsers: argparse._SubParsersAction) -> None:
    """Add the `compare-cohort` subcommand."""
    parser = subparsers.add_parser(
        "compare-cohort",
        help="how a dataset built by `preprocess` agrees with the Symile-MIMIC release",
        description=(
            "Compare our dataset's cohort with the release's: admissions in both or one "
            "only, the same ECG study and CXR dicom_id, lab values, and split overlap (a "
            "patient in their train split and our test split matters). Writes "
            "cohort_comparison.md and cohort_comparison.json."
        ),
    )
    parser.add_argument("--release", type=Path, required=True, help="the release folder")
    parser.add_argument(
        "--dataset", type=Path, required=True, help="our dataset directory (from preprocess)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: the dataset folder)"
    )
    parser.set_defaults(run=run_compare_cohort)


def reference_config(state_dict: dict[str, Any], hyper: dict[str, Any], source: Path) -> Any:
    """The TrainConfig of a reference checkpoint: the reference architecture shaped by its
    weights (d, number of labs) and the objective of its hyper_parameters."""
    from models import ModelConfig
    from symile_clinical.config import TrainConfig
    from symile_clinical.lightning_checkpoint import LightningCheckpointError

    try:
        d = int(state_dict["labs_encoder.fc3.weight"].shape[0])
        n_labs = int(state_dict["labs_encoder.fc1.weight"].shape[1]) // 2
        logit_scale = float(state_dict["logit_scale"])
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
        embed_dim=d,
        projection="layernorm",
        n_labs=n_labs,
        cxr_size=320,
        ecg_samples=5000,
        logit_scale_init=float(hyper.get("logit_scale_init", logit_scale)),
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
    from symile_clinical.checkpoint import file_sha256, save_checkpoint
    from symile_clinical.lightning_checkpoint import (
        LightningCheckpointError,
        read_lightning_checkpoint,
    )
    from symile_clinical.runs import RunDir

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
        "format": 1,
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


def run_import_release(args: argparse.Namespace) -> int:
    """Import the release's dataset, then its checkpoint as a run."""
    from preprocessing.release import SymileMimicRelease, import_release_dataset
    from symile_clinical.dataset_dir import DatasetDir

    release = SymileMimicRelease(args.release)
    out = Path(args.out)
    dataset = DatasetDir(out / "dataset")
    summary = import_release_dataset(release, dataset, chunk_rows=args.chunk_rows)
    checkpoint = args.checkpoint or release.checkpoint_path
    run = import_release_run(checkpoint, out / "run", dataset)
    log.info(
        "dataset %s: %s, %s queries with %d candidates each; run %s",
        dataset.path,
        summary.splits,
        summary.queries,
        summary.candidates_per_query,
        run.path,
    )
    log.info(
        "next: symile-clinical evaluate --run %s; symile-clinical app --run %s", run.path, run.path
    )
    return 0


def run_compare_cohort(args: argparse.Namespace) -> int:
    """Compare the two cohorts and write the markdown and JSON tables."""
    from preprocessing.compare_cohort import compare_cohort, write_comparison
    from preprocessing.release import SymileMimicRelease
    from symile_clinical.dataset_dir import DatasetDir

    dataset = DatasetDir(args.dataset)
    result = compare_cohort(SymileMimicRelease(args.release), dataset)
    json_path, md_path = write_comparison(result, args.out or dataset.path)
    a = result["admissions"]
    log.info(
        "%d admissions in both, %d release only, %d ours only; %d of their train patients in "
        "our test; wrote %s and %s",
        a["both"],
        a["theirs_only"],
        a["ours_only"],
        result["their_train_patients_in_our_test"],
        md_path,
        json_path,
    )
    return 0
