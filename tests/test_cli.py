"""The command line: every subcommand is registered and `--help` works without heavy imports."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from symile_clinical.cli import COMMAND_GROUP, build_parser, main

EXPECTED = {"synth", "preprocess", "train", "evaluate", "reproduce-xor", "index", "app", "demo"}
EXPECTED |= {"import-release", "compare-cohort", "study", "pretrain", "labels"}


def test_every_subcommand_is_declared() -> None:
    names = {entry.name for entry in entry_points(group=COMMAND_GROUP)}
    assert names == EXPECTED


def test_every_subcommand_imports() -> None:
    for entry in entry_points(group=COMMAND_GROUP):
        assert callable(entry.load()), entry.name


def test_help_lists_the_subcommands() -> None:
    text = build_parser().format_help()
    for name in EXPECTED:
        assert name in text
    assert "unavailable" not in text


def test_no_command_prints_help_and_succeeds(capsys) -> None:
    assert main([]) == 0
    assert "symile-clinical" in capsys.readouterr().out


def test_console_script_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "symile_clinical", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "preprocess" in result.stdout


def test_preprocess_windows_parse_and_bad_ones_are_usage_errors(capsys) -> None:
    parser = build_parser()
    base = ["preprocess", "--mimic-root", "r", "--out", "o"]
    args = parser.parse_args([*base, "--ecg-window=-12,12", "--cxr-window", "12,48"])
    assert args.ecg_window == (-12.0, 12.0) and args.cxr_window == (12.0, 48.0)
    for bad in ("--cxr-window=72,24", "--lab-window=a,b", "--lab-window=1"):
        try:
            parser.parse_args([*base, bad])
        except SystemExit as error:
            assert error.code == 2
        else:
            raise AssertionError(f"{bad} accepted")
    assert "LO must be below HI" in capsys.readouterr().err
