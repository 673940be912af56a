"""Typed errors of preprocessing: each carries the file (or table, or option) and a reason.

Every one is a `PreprocessError`, itself a `symile_clinical.errors.SymileClinicalError`:
the command line reports "path: reason" and exits with the error's `exit_code` (1: an
input cannot be used; 2: an option's value is wrong), so no command catches its own.
"""

from __future__ import annotations

from os import PathLike

from symile_clinical.errors import EXIT_USAGE, SymileClinicalError


class PreprocessError(SymileClinicalError):
    """Base class of every error preprocessing raises on purpose: (path, reason)."""


class InvalidRecord(PreprocessError):  # noqa: N818 (the name the design documents use)
    """One input record (ECG, image, lab row) cannot be used; the run goes on without it.

    ``path`` is a str (status.json stores it); ``kind`` is a short category
    (``missing_leads``, ``nan_gap``, ``no_pixel_data``, ...) that the report counts by;
    ``reason`` is the sentence a person reads.
    """

    def __init__(self, path: str | PathLike[str], reason: str, kind: str = "unreadable") -> None:
        super().__init__(str(path), reason)
        self.kind = kind


class InvalidRoot(PreprocessError):  # noqa: N818
    """The MIMIC root is unusable as a whole (missing table, wrong columns): stop at once.

    ``path`` is the root; ``problems`` lists every problem found, and ``reason`` lists them.
    """

    def __init__(self, root: str | PathLike[str], problems: list[str]) -> None:
        self.problems = list(problems)
        listing = "\n  - ".join(self.problems)
        super().__init__(str(root), f"not a usable MIMIC root:\n  - {listing}")


class InvalidSettings(PreprocessError):  # noqa: N818
    """An option's value that cannot be used, on its own or for this cohort (exit 2).

    ``path`` names the option (``--candidates``), e.g. a split too small for K candidates.
    """

    exit_code = EXIT_USAGE


class IncompatibleOutput(PreprocessError):  # noqa: N818
    """The output directory holds a dataset built with different settings."""


class SynthError(PreprocessError):
    """The synthetic-cohort generator refused or failed (e.g. a foreign output folder)."""


class InvalidTable(PreprocessError):  # noqa: N818
    """A table that cannot be read at all (truncated, corrupt): stop at once, naming it."""
