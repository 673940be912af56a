"""`symile-clinical train`: train Symile, pairwise CLIP, GRAM, TRIANGLE or Gated Symile on a
preprocessed dataset."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# formats/run_config.OBJECTIVES, named here so that the CLI's parser does not import torch
# (tests/test_train.py checks they agree).
OBJECTIVE_CHOICES = ("symile", "clip", "gram", "triangle", "gated-symile")

# argparse dest -> TrainConfig field (None values mean "keep the preset's").
TRAIN_OVERRIDES = {
    "objective": "objective",
    "negatives": "negatives",
    "device": "device",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "seed": "seed",
    "max_steps": "max_steps",
    "lab_dropout": "lab_dropout",
    "patience": "patience",
    "checkpoint_every": "checkpoint_every",
    "num_workers": "num_workers",
    "precision": "precision",
    "compile": "compile",
    "cxr_weights": "cxr_weights",
    "encoder_weights": "encoder_weights",
}
MODEL_OVERRIDES = {
    "projection": "projection",
    "embed_dim": "embed_dim",
    "freeze_logit_scale": "freeze_logit_scale",
    "cxr_arch": "cxr_arch",
    "cxr_size": "cxr_size",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train Symile (or CLIP, GRAM, TRIANGLE, Gated Symile) on a preprocessed dataset "
        "into a run directory",
        description=(
            "Train the ECG + labs + CXR model. Writes the run directory (docs/formats.md): "
            "its config (with the dataset's absolute path), the last and best checkpoints "
            "and the metrics log. For several GPUs or "
            "nodes run the same command under torchrun: "
            "`torchrun --nproc_per_node N -m symile_clinical train ...`."
        ),
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="dataset directory (from `preprocess`); on --resume, default: the run's own",
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory to write")
    parser.add_argument(
        "--config",
        default="demo",
        help="preset (demo: Symile, demo-clip: CLIP, demo-gram, demo-triangle, "
        "demo-gated-symile, paper, search-base) or a TOML file (default: demo)",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVE_CHOICES,
        help="the loss and its retrieval score (default: the preset's); GRAM adds a matching "
        "head, Gated Symile a gate, to the model",
    )
    parser.add_argument("--negatives", choices=("n", "n_squared", "conditional"))
    parser.add_argument(
        "--resume", action="store_true", help="continue RUN from its last checkpoint"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch (all ranks together)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument(
        "--lab-dropout", type=float, help="probability of hiding each observed lab in training"
    )
    parser.add_argument("--patience", type=int, help="early-stopping patience in epochs (0: off)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the training step"
    )
    parser.add_argument("--projection", choices=("layernorm", "l2", "none"))
    parser.add_argument("--embed-dim", type=int)
    parser.add_argument(
        "--freeze-logit-scale", action="store_true", default=None, help="keep the scale at init"
    )
    parser.add_argument("--cxr-arch", choices=("resnet_tiny", "resnet10", "resnet18", "resnet50"))
    parser.add_argument("--cxr-size", type=int, help="CXR side the encoder sees, px")
    parser.add_argument(
        "--cxr-weights", help="local state dict for the CXR ResNet (nothing is downloaded)"
    )
    parser.add_argument(
        "--encoder-weights",
        help="local state dict or run checkpoint (best.pt) whose ecg_encoder./labs_encoder./"
        "cxr_encoder. weights start those encoders (pretrained encoders; nothing is downloaded)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    # Test hook: SIGKILL this process after N steps, as a crash would (kill-and-resume test).
    parser.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def _overrides(args: argparse.Namespace, names: dict[str, str]) -> dict[str, object]:
    return {
        field: getattr(args, dest)
        for dest, field in names.items()
        if getattr(args, dest) is not None
    }


def run(args: argparse.Namespace) -> int:
    """Build the TrainConfig (preset/TOML + flags, or the run's own on --resume) and train."""
    from symile_clinical.errors import UsageError
    from symile_clinical.formats.run_config import config_from_dict
    from symile_clinical.formats.run_dir import RunDir
    from symile_clinical.training.config import load_config
    from symile_clinical.training.trainer import train

    overrides = _overrides(args, TRAIN_OVERRIDES)
    model_overrides = _overrides(args, MODEL_OVERRIDES)
    run_dir = RunDir(args.out)
    if args.resume and run_dir.has_config():
        if overrides or model_overrides:
            raise UsageError("--resume", "continues RUN with its own config; drop the other flags")
        config = run_dir.read_config()
        data = args.data or run_dir.recorded_dataset()
    else:
        base = load_config(args.config)
        config = config_from_dict(
            {**overrides, "model": model_overrides}, source="command line", base=base
        )
        data = args.data
    if data is None:
        raise UsageError("--data", "is required")
    result = train(
        config,
        data,
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        stop_after_steps=args.stop_after_steps,
    )
    best = f"{result.best_val_acc:.3f}" if result.best_val_acc is not None else "n/a"
    log.info(
        "trained %d steps (%d epochs%s); best val top-1 %s at epoch %s; run in %s",
        result.steps,
        result.epochs_completed,
        ", stopped early" if result.stopped_early else "",
        best,
        result.best_epoch,
        result.run_dir,
    )
    return 0
