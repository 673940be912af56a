"""`symile-clinical reproduce-xor`: the Symile paper's binary XOR experiment (Figure 3)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `reproduce-xor` subcommand."""
    parser = subparsers.add_parser(
        "reproduce-xor",
        help="re-run the Symile paper's binary XOR experiment (Symile vs pairwise CLIP)",
        description=(
            "a, b ~ Bernoulli(0.5), i ~ Bernoulli(p), c = (a XOR b)^i * a^(1-i): b shares no "
            "pairwise information with a or c, but I(b; c | a) grows with p. Linear encoders "
            "are trained with Symile and with pairwise CLIP for each p, and predict b zero-shot "
            "from (a, c). Writes xor_results.{json,csv,md} and xor_accuracy.png to --out."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/xor"), help="output folder")
    parser.add_argument(
        "--p",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        help="values of p (default: 0 0.25 0.5 0.75 1)",
    )
    parser.add_argument("--input-dim", type=int, default=1, help="bits per vector d_v (1)")
    parser.add_argument("--embed-dim", type=int, default=16, help="representation size d (16)")
    parser.add_argument("--n-train", type=int, default=None, help="training samples per p")
    parser.add_argument("--n-test", type=int, default=None, help="test samples per p")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--negatives", choices=("n", "n_squared"), default="n", help="Symile negatives"
    )
    parser.add_argument(
        "--objectives",
        default="symile,clip",
        help="comma-separated, of symile,clip,gram,triangle (default symile,clip)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--paper-size",
        action="store_true",
        help="the paper's sizes: 10,000 train, 5,000 test, batch 1,000, 100 epochs",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiment and log the table; a bad option value is a UsageError (exit 2)."""
    from dataclasses import replace

    from symile_clinical.errors import UsageError
    from symile_clinical.experiments.xor import (
        RESULTS_MD,
        XorConfig,
        paper_size,
        results_table_markdown,
        run_xor_experiment,
    )

    try:
        config = XorConfig(
            out_dir=args.out,
            p_values=tuple(args.p),
            objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
            input_dim=args.input_dim,
            embed_dim=args.embed_dim,
            lr=args.lr,
            negatives=args.negatives,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
        )
        if args.paper_size:
            config = paper_size(config)
        overrides = {
            name: value
            for name, value in (
                ("n_train", args.n_train),
                ("n_test", args.n_test),
                ("batch_size", args.batch_size),
                ("epochs", args.epochs),
            )
            if value is not None
        }
        config = replace(config, **overrides)
    except ValueError as error:  # XorConfig checks its own fields
        raise UsageError("reproduce-xor", str(error)) from error
    rows = run_xor_experiment(config)
    log.info("results in %s:\n%s", args.out / RESULTS_MD, results_table_markdown(rows))
    return 0
