"""What the generator is asked to make (SynthConfig) and what it made (SynthSummary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from preprocessing.errors import InvalidSettings

# The generator's answer key: the hidden state of each admission, for tests and diagnosis
# only; no product command reads it.
TRUTH_FILE = "synth_truth.csv.gz"


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of one synthetic cohort; the same config gives byte-identical files."""

    out: Path
    admissions: int
    seed: int = 0
    joint_fraction: float = 0.5  # share of the CXR marker findings that are XOR(ECG, labs)
    corrupt_fraction: float = 0.0  # share of admissions with one deliberately broken file
    workers: int = 1
    cxr_max_size: int | None = None  # cap on the larger image side (pixels); None: 1k-3k
    progress: bool = True

    def __post_init__(self) -> None:
        if self.admissions < 1:
            raise InvalidSettings("--admissions", f"must be >= 1, got {self.admissions}")
        if not 0.0 <= self.joint_fraction <= 1.0:
            raise InvalidSettings(
                "--joint-fraction", f"must be in [0, 1], got {self.joint_fraction}"
            )
        if not 0.0 <= self.corrupt_fraction <= 1.0:
            raise InvalidSettings(
                "--corrupt-fraction", f"must be in [0, 1], got {self.corrupt_fraction}"
            )
        if self.workers < 1:
            raise InvalidSettings("--workers", f"must be >= 1, got {self.workers}")
        if self.cxr_max_size is not None and self.cxr_max_size < 32:
            raise InvalidSettings(
                "--cxr-max-size", f"must be >= 32 pixels, got {self.cxr_max_size}"
            )


@dataclass(frozen=True)
class SynthSummary:
    """Counts of what was written, and where."""

    out: Path
    patients: int
    admissions: int
    lab_events: int
    ecg_records: int
    cxr_images: int
    corrupted: int
    joint_markers: int
    seconds: float
    files: dict[str, Path] = field(default_factory=dict)
