"""`symile-clinical study`: argparse for the Symile-vs-CLIP study (app/workflows/study.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.workflows.cohort import PRETRAIN_FRACTION, PRETRAIN_SEED, PRETRAIN_SOURCES
from app.workflows.study import DEFAULT_RECIPES, RECIPES, StudyConfig, run_study
from symile_clinical.cli import int_at_least


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from error
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"joint fractions must be in [0, 1], got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `study` subcommand."""
    parser = subparsers.add_parser(
        "study",
        help="Symile vs CLIP (and --objectives) across joint fractions: cohorts, training, report",
        description=(
            "Generate synthetic cohorts at each joint fraction (several cohort seeds), train "
            "each objective (Symile and CLIP unless --objectives) with its own recipe for "
            "several seeds, measure each once on the test split, and write OUT/report/ "
            "(markdown, HTML, PNG). Resumable."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("study"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="a tiny study, for checks")
    parser.add_argument("--admissions", type=int_at_least(20), default=None)
    parser.add_argument("--fractions", type=_floats, default=None, help="e.g. 0,0.5,1")
    parser.add_argument("--cohort-seeds", type=int_at_least(1), default=None, help="how many")
    parser.add_argument("--seeds", type=int_at_least(1), default=None, help="training seeds")
    parser.add_argument("--jobs", type=int_at_least(1), default=2, help="parallel trainings")
    parser.add_argument("--max-steps", type=int_at_least(1), default=None)
    parser.add_argument(
        "--objectives",
        type=_objectives,
        default=tuple(DEFAULT_RECIPES),
        help=f"comma-separated objectives to train, each with its recipe (default symile,clip; "
        f"known: {','.join(RECIPES)})",
    )
    for objective, preset in RECIPES.items():
        parser.add_argument(
            f"--{objective}-recipe",
            default=preset,
            help=f"preset name or TOML file for {objective} (default {preset})",
        )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--encoder-weights",
        type=_existing_file,
        default=None,
        help="a local weights file (train --encoder-weights) that starts every run's encoders",
    )
    weights.add_argument(
        "--pretrain",
        action="store_true",
        help="first pretrain the encoders on a separate labelled cohort's findings "
        f"(OUT/pretrain/: seed {PRETRAIN_SEED}, F {PRETRAIN_FRACTION}) and start every run "
        "from them",
    )
    parser.add_argument(
        "--pretrain-on",
        choices=PRETRAIN_SOURCES,
        default="own",
        help="where pretraining learns: each measured cohort's own train split (default, "
        "chosen on validation) or a separate synthetic hospital; labels derived from MIMIC's "
        "label sources",
    )
    parser.add_argument(
        "--start",
        dest="starts",
        metavar="NAME=SPEC",
        type=_start,
        action="append",
        default=[],
        help="measure several encoder starts side by side (repeatable; one curve each): SPEC "
        "is random, derived (pretrained on labels derived from MIMIC's label sources) or a "
        "weights file; replaces --pretrain and --encoder-weights",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_study_command)


def _objectives(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in RECIPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: objectives among {', '.join(RECIPES)}")
    return names


def _start(text: str) -> tuple[str, str]:
    name, _, spec = text.partition("=")
    if not name or not spec:
        raise argparse.ArgumentTypeError(f"{text!r}: NAME=SPEC expected")
    return name, spec


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def run_study_command(args: argparse.Namespace) -> int:
    """Build the StudyConfig from the arguments and run the study; exit status 0."""
    changes: dict[str, Any] = {
        "jobs": args.jobs,
        "progress": not args.no_progress,
        "recipes": {o: getattr(args, f"{o.replace('-', '_')}_recipe") for o in args.objectives},
    }
    if args.admissions is not None:
        changes["admissions"] = args.admissions
    if args.fractions is not None:
        changes["fractions"] = args.fractions
    if args.cohort_seeds is not None:
        changes["cohort_seeds"] = tuple(range(args.cohort_seeds))
    if args.seeds is not None:
        changes["seeds"] = tuple(range(args.seeds))
    if args.max_steps is not None:
        changes["max_steps"] = args.max_steps
    if args.encoder_weights is not None:
        changes["encoder_weights"] = args.encoder_weights
    if args.pretrain:
        changes["pretrain"] = True
    changes["pretrain_on"] = args.pretrain_on
    if args.starts:
        changes["starts"] = dict(args.starts)
    if args.quick:
        config = StudyConfig.quick(args.out, **changes)
    else:
        config = StudyConfig(out=args.out, **changes)
    run_study(config, command="symile-clinical " + " ".join(sys.argv[1:]))
    return 0
