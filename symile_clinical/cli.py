"""The `symile-clinical` command line: one subcommand per pipeline step."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from symile_clinical.errors import EXIT_OK, EXIT_USAGE, SymileClinicalError

log = logging.getLogger("symile_clinical")

COMMAND_GROUP = "symile_clinical.commands"


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser; each subcommand is registered through an entry point."""
    parser = argparse.ArgumentParser(
        prog="symile-clinical",
        description="Clinical multimodal retrieval with Symile: ECG + labs -> chest X-ray.",
        epilog=(
            "Exit status, for every command: 0 done; 1 an input cannot be used (the message "
            "names the file and the reason); 2 the command line is wrong."
        ),
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


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= minimum, else a usage error (exit 2) naming it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from error
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _register_unavailable(
    subparsers: argparse._SubParsersAction, name: str, error: Exception
) -> None:
    """Keep the other commands usable when one cannot be imported; say why when it is used."""

    def fail(_args: argparse.Namespace) -> int:
        log.error("command %r is unavailable: %s", name, error)
        return EXIT_USAGE

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
        return EXIT_OK if args.command is None else EXIT_USAGE
    try:
        return int(run(args) or EXIT_OK)
    except SymileClinicalError as error:
        # An input that cannot be used: say which and why, without a traceback.
        log.error("%s", error)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
