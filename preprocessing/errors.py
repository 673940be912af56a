"""Typed errors of preprocessing: each carries the file (or table) and a human reason."""

from __future__ import annotations

from pathlib import Path


class PreprocessError(Exception):
    """Base class of every error preprocessing raises on purpose."""


class InvalidRecord(PreprocessError):  # noqa: N818 (the name the design documents use)
    """One input record (ECG, image, lab row) cannot be used; the run goes on without it.

    ``kind`` is a short category (``missing_leads``, ``nan_gap``, ``no_pixel_data``, ...)
    that the report counts by; ``reason`` is the sentence a person reads.
    """

    def __init__(self, path: str | Path, reason: str, kind: str = "unreadable") -> None:
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")


class InvalidRoot(PreprocessError):  # noqa: N818
    """The MIMIC root is unusable as a whole (missing table, wrong columns): stop at once."""

    def __init__(self, root: str | Path, problems: list[str]) -> None:
        self.root = str(root)
        self.problems = list(problems)
        listing = "\n  - ".join(self.problems)
        super().__init__(f"MIMIC root {self.root} is not usable:\n  - {listing}")


class InvalidSettings(PreprocessError):  # noqa: N818
    """The settings cannot be met by this cohort (e.g. a split too small for K candidates)."""


class IncompatibleOutput(PreprocessError):  # noqa: N818
    """The output directory holds a dataset built with different settings."""
