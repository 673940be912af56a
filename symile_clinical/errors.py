"""The one error base of the project: every error raised on purpose names a path and a reason.

Exit codes, the same for every `symile-clinical` command (the CLI applies them in one place):

- 0: the command did what it was asked;
- 1: an input it was given cannot be used (a file, a directory, a checkpoint, a dataset): the
  message names the path and the reason, without a traceback;
- 2: the command line itself is wrong (an unknown option, or a value no input could satisfy).

An error that is not a `SymileClinicalError` is a bug: it propagates with its traceback.
"""

from __future__ import annotations

from os import PathLike

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2


class SymileClinicalError(Exception):
    """An input that cannot be used: `path` (a file, a folder, an option) and `reason`.

    `str(error)` is "path: reason". `exit_code` is what the CLI exits with when this error
    ends a command (see the module docstring).
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str | PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UsageError(SymileClinicalError):
    """An option's value that no input could satisfy; `path` names the option."""

    exit_code = EXIT_USAGE
