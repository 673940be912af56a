"""quarantine.csv: one row per rejected record or admission (id, file, stage, reason).

Stages: ``cohort`` (an admission left out: no ECG/CXR/lab in its windows, or its chosen
file was rejected), ``ecg`` and ``cxr`` (a file that could not be made into a tensor),
``labs`` (a labevents row whose ``valuenum`` holds something other than a number; an
empty valuenum beside a text value such as ``___`` is ordinary MIMIC and not quarantined).
``reason`` starts with a short kind (``nan_gap: ...``) that the report counts by.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from preprocessing import cohort
from preprocessing.cohort import CohortWindows
from symile_clinical.atomic import write_text_atomic

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


def exclusion_rows(excluded: pd.DataFrame, windows: CohortWindows) -> list[dict]:
    """Quarantine rows (stage ``cohort``) of the admissions a window left out, with the window."""
    text = {
        cohort.REASON_NO_ECG: f"no ECG within {list(windows.ecg_h)} h of admittime",
        cohort.REASON_NO_CXR: (
            f"no {'/'.join(windows.cxr_views)} CXR within {list(windows.cxr_h)} h of admittime"
        ),
        cohort.REASON_NO_LABS: f"no chosen lab within {list(windows.lab_h)} h of admittime",
    }
    return [
        {"id": hadm_id, "file": "", "stage": "cohort", "reason": f"{reason}: {text[reason]}"}
        for hadm_id, reason in zip(excluded["hadm_id"], excluded["reason"], strict=True)
    ]


def malformed_lab_rows(malformed: pd.DataFrame, labevents_file: str) -> list[dict]:
    """Quarantine rows (stage ``labs``) of labevents rows whose valuenum is not a number."""
    return [
        {
            "id": labevent_id,
            "file": labevents_file,
            "stage": "labs",
            "reason": f"malformed_valuenum: valuenum {text!r} is not a number",
        }
        for labevent_id, text in zip(
            malformed["labevent_id"], malformed["valuenum_text"], strict=True
        )
    ]


def write_quarantine(frame: pd.DataFrame, path: Path) -> None:
    """Write quarantine.csv atomically."""
    write_text_atomic(path, frame.to_csv(index=False, lineterminator="\n"))
