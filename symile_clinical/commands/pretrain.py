"""`symile-clinical pretrain`: encoders trained on per-modality findings, as a weights file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain` subcommand."""
    from symile_clinical.cli import int_at_least

    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain the encoders on per-modality findings (a labels CSV) -> a weights file",
        description=(
            "Train each encoder of a preset's model, with a linear head, to predict its own "
            "modality's findings (LABELS: hadm_id and columns <ecg|labs|cxr>:<finding>, "
            "values 1, 0 or empty) on the dataset's train split; write the encoders' weights "
            "to OUT for `train --encoder-weights OUT`. Reports val accuracy; never reads test."
        ),
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset directory")
    parser.add_argument("--labels", type=Path, required=True, help="labels CSV")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write")
    parser.add_argument("--config", default="demo", help="preset or TOML whose model to use")
    parser.add_argument("--epochs", type=int_at_least(1), default=20)
    parser.add_argument("--seed", type=int, default=None, help="default: the config's")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Pretrain and write the weights file; exit status 0."""
    import dataclasses

    from symile_clinical.formats.dataset_dir import DatasetDir
    from symile_clinical.training.config import load_config
    from symile_clinical.training.pretrain import pretrain_encoders

    config = load_config(args.config)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    accuracy = pretrain_encoders(
        config,
        DatasetDir(args.data),
        args.labels,
        args.out,
        epochs=args.epochs,
        device=args.device,
        progress=not args.no_progress,
    )
    for modality, value in accuracy.items():
        log.info("pretrain: %s findings, val accuracy %.3f", modality, value)
    return 0
