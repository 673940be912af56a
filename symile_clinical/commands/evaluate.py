"""`symile-clinical evaluate`: retrieval metrics with bootstrap CIs, report with plots."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from symile_clinical.cli import int_at_least
from symile_clinical.commands import add_run_options

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a run (and compare runs) on the test split; write RUN/report/",
        description=(
            "Rank each test query's candidate CXRs (top-1 with a bootstrap 95% CI, chance "
            "beside it), retrieve against the whole test pool (recall@1/5/10, MRR, median "
            "rank), break accuracy down by observed labs and with all labs masked, and with "
            "--compare put runs side by side with paired bootstrap differences. Writes "
            "metrics.json, report.md, report.html and PNG plots to RUN/report/."
        ),
    )
    add_run_options(parser, "run directory")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=[],
        metavar="RUN2",
        help="other run directories, evaluated on the same data and compared pairwise",
    )
    parser.add_argument(
        "--bootstrap", type=int_at_least(2), default=1000, help="bootstrap resamples (>= 2)"
    )
    parser.add_argument("--checkpoint", default="best", help="best | last | a file path")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--seed", type=int, default=0, help="ties, bootstrap and examples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--lab-bins", type=int, default=5, help="bins of observed-lab counts")
    parser.add_argument("--examples", type=int, default=6, help="example queries in the grid")
    parser.add_argument("--out", type=Path, default=None, help="report folder (RUN/report)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and write the report; the CLI turns a refused input into exit status 1."""
    from symile_clinical.evaluation.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(
        run_dir=args.run_dir,
        data_dir=args.data,
        compare=tuple(args.compare),
        checkpoint=args.checkpoint,
        split=args.split,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        n_lab_bins=args.lab_bins,
        n_examples=args.examples,
        out_dir=args.out,
    )
    result = evaluate(config)
    log.info("wrote %s", ", ".join(str(p) for p in result.files.values()))
    return 0
