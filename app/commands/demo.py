"""`symile-clinical demo`: argparse for the whole job on the synthetic cohort, then the app."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from app.commands.serve import access_options, add_serve_options, check_access, serve
from app.workflows.cohort import PRETRAIN_SOURCES
from symile_clinical.cli import int_at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="synthesise, preprocess, train Symile and CLIP, evaluate, index, serve the app",
        description=(
            "The whole job on a fresh machine: a synthetic cohort in MIMIC's formats "
            "(OUT/mimic), the dataset (OUT/dataset), Symile and CLIP runs (OUT/runs/symile, "
            "OUT/runs/clip) with the comparison report and candidate indexes, then the app. "
            "Steps whose output is current are skipped, so a second run starts the app at once."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("demo-data"), help="output folder")
    parser.add_argument("--admissions", type=int, default=2000, help="synthetic admissions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--joint-fraction",
        type=float,
        default=0.5,
        help="share of CXR findings carried only by ECG and labs jointly (see `synth`)",
    )
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument(
        "--bootstrap", type=int_at_least(2), default=1000, help="bootstrap resamples (>= 2)"
    )
    parser.add_argument(
        "--no-pretrain",
        action="store_true",
        help="train both objectives from random encoders (default: encoders pretrained on "
        "labels derived from the cohort's MIMIC-format label sources)",
    )
    parser.add_argument(
        "--pretrain-on",
        choices=PRETRAIN_SOURCES,
        default="own",
        help="where the encoders learn: the demo cohort's own train split (default, chosen on "
        "validation) or a separate synthetic hospital (seed 7)",
    )
    parser.add_argument("--no-serve", action="store_true", help="stop before serving the app")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_serve_options(parser)
    parser.set_defaults(run=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """Build (or keep) everything the demo needs, then serve the app unless --no-serve.

    A bad option value is a UsageError (exit 2); an input that cannot be used, exit 1.
    """
    import logging

    from app.workflows.demo import DemoConfig, run_demo
    from symile_clinical.formats.run_dir import RunDir

    if not args.no_serve:
        # A server that would refuse to start (sign-in not configured) fails before the
        # demo's training, not after it.
        check_access(args.host, args.allow_hosts, access_options(args), args.secrets)
    config = DemoConfig(
        out=args.out,
        admissions=args.admissions,
        seed=args.seed,
        joint_fraction=args.joint_fraction,
        workers=args.workers,
        n_bootstrap=args.bootstrap,
        pretrain=not args.no_pretrain,
        pretrain_on=args.pretrain_on,
        progress=not args.no_progress,
    )
    result = run_demo(config)
    logging.getLogger(__name__).info(
        "demo ready in %.0f s (ran: %s); report: %s",
        result.seconds,
        ", ".join(result.ran) or "nothing, all current",
        RunDir(result.symile_run).report_markdown,
    )
    if args.no_serve:
        return 0
    return serve(
        result.symile_run,
        args.host,
        args.port,
        args.allow_hosts,
        args.device,
        access_options(args),
        args.secrets,
    )
