"""The `symile-clinical` command line: one subcommand per pipeline step."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

log = logging.getLogger("symile_clinical")

COMMAND_GROUP = "symile_clinical.commands"


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser; each subcommand is registered through an entry point."""
    parser = argparse.ArgumentParser(
        prog="symile-clinical",
        description="Clinical multimodal retrieval with Symile: ECG + labs -> chest X-ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Registration functions only build argparse parsers; heavy imports happen when a
    # command runs, so `--help` stays fast.
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            register: Callable[[argparse._SubParsersAction], None] = entry.load()
        except ImportError as error:
            _register_unavailable(subparsers, entry.name, error)
            continue
        register(subparsers)
    return parser


def _register_unavailable(
    subparsers: argparse._SubParsersAction, name: str, error: Exception
) -> None:
    """Keep the other commands usable when one cannot be imported; say why when it is used."""

    def fail(_args: argparse.Namespace) -> int:
        log.error("command %r is unavailable: %s", name, error)
        return 2

    parser = subparsers.add_parser(name, help=f"(unavailable: {error})")
    parser.set_defaults(run=fail)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 0 if args.command is None else 2
    return int(run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
