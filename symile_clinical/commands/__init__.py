"""Subcommand registrations: argparse only, heavy imports happen when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_run_options(parser: argparse.ArgumentParser, run_help: str) -> None:
    """--run RUN (in args.run_dir: the CLI keeps the command's callable in args.run) and
    --data (default: the dataset the run records)."""
    parser.add_argument(
        "--run", dest="run_dir", metavar="RUN", type=Path, required=True, help=run_help
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="dataset directory (default: the run's)"
    )
