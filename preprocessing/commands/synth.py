"""`symile-clinical synth`: write a synthetic cohort in MIMIC's file formats and layouts."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `synth` subcommand (imports only argparse; the generator loads on run)."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic MIMIC-IV / MIMIC-IV-ECG / MIMIC-CXR cohort",
        description=(
            "Write DIR/mimic-iv/hosp, DIR/mimic-iv-ecg and DIR/mimic-cxr exactly as the "
            "PhysioNet releases are laid out, plus DIR/CORRUPTED.csv (deliberately broken "
            "files), the generator's answer key (the hidden state of each admission, for tests "
            "and diagnosis only; no other command reads it; docs/preprocessing.md) and "
            "DIR/synth.json. The same seed gives byte-identical files for any --workers."
        ),
    )
    parser.add_argument("--out", required=True, help="output directory DIR")
    parser.add_argument("--admissions", type=int, required=True, help="number of admissions")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--joint-fraction",
        type=float,
        default=0.5,
        help="share of the CXR marker findings determined only by ECG and labs jointly "
        "(XOR); rounded to quarters: 4 markers (default 0.5)",
    )
    parser.add_argument(
        "--corrupt-fraction",
        type=float,
        default=0.0,
        help="share of admissions given one deliberately broken file (default 0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes (default: min(4, CPU count))",
    )
    parser.add_argument(
        "--cxr-max-size",
        type=int,
        default=None,
        help="cap the larger CXR side at this many pixels (e.g. 256 for a quick demo); "
        "default: real sizes, 1k-3k pixels",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build a SynthConfig from the arguments and generate the cohort; exit status 0.

    A bad option value raises InvalidSettings (exit 2), a foreign --out SynthError (exit 1);
    the CLI reports either.
    """
    import logging
    from pathlib import Path

    from preprocessing.synth.config import SynthConfig
    from preprocessing.synth.generate import generate_cohort

    log = logging.getLogger(__name__)
    config = SynthConfig(
        out=Path(args.out),
        admissions=args.admissions,
        seed=args.seed,
        joint_fraction=args.joint_fraction,
        corrupt_fraction=args.corrupt_fraction,
        workers=args.workers,
        cxr_max_size=args.cxr_max_size,
        progress=not args.no_progress,
    )
    summary = generate_cohort(config)
    log.info(
        "synth: wrote %d admissions of %d patients (%d ECGs, %d CXR images, %d lab events, "
        "%d corrupted files) to %s in %.1f s",
        summary.admissions,
        summary.patients,
        summary.ecg_records,
        summary.cxr_images,
        summary.lab_events,
        summary.corrupted,
        summary.out,
        summary.seconds,
    )
    return 0
