"""quarantine.csv: one row per rejected record or admission (id, file, stage, reason).

Stages: ``cohort`` (an admission left out: no ECG/CXR/lab in its windows, or its chosen
file was rejected), ``ecg`` and ``cxr`` (a file that could not be made into a tensor),
``labs`` (a labevents row whose ``valuenum`` holds something other than a number; an
empty valuenum beside a text value such as ``___`` is ordinary MIMIC and not quarantined).
``reason`` starts with a short kind (``nan_gap: ...``) that the report counts by.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

QUARANTINE_COLUMNS = ("id", "file", "stage", "reason")
STAGES = ("cohort", "ecg", "cxr", "labs")


def quarantine_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts with id, file, stage, reason) as the quarantine table, stable order."""
    frame = pd.DataFrame(rows, columns=list(QUARANTINE_COLUMNS)).astype(str)
    frame["_stage"] = frame["stage"].map({s: i for i, s in enumerate(STAGES)}).fillna(len(STAGES))
    frame = frame.drop_duplicates(["stage", "id", "file"])
    frame = frame.sort_values(["_stage", "file", "id"], kind="stable").drop(columns="_stage")
    return frame.reset_index(drop=True)


def reason_kind(reason: str) -> str:
    """The short kind a reason starts with ('nan_gap: lead V3 ...' -> 'nan_gap')."""
    return reason.split(":", 1)[0].strip()


def write_quarantine(frame: pd.DataFrame, path: Path) -> None:
    """Write quarantine.csv atomically."""
    write_atomic_text(path, frame.to_csv(index=False, lineterminator="\n"))


def write_atomic_text(path: Path, text: str) -> None:
    """Write text to path through a temporary file in the same folder and os.replace."""
    path = Path(path)
    # A fixed temporary name: a run killed mid-write leaves one file that the rerun replaces.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
