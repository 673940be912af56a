"""quarantine.csv: one row per rejected record or admission (id, file, stage, reason).

Stages: ``tables`` (a row of admissions, record_list.csv or the CXR tables that does not
parse or whose path leaves its release folder: its id if readable, the table, the line and
the reason), ``cohort`` (an admission left out: no ECG/CXR/lab in its windows, or its chosen
file was rejected), ``ecg`` and ``cxr`` (a file that could not be made into a tensor),
``labs`` (a labevents row whose ``valuenum`` holds something other than a number, whose
fields or times do not parse, or whose value is not finite or lies outside the lab
catalogue's impossible-value bounds; an empty valuenum beside a text value such as ``___``
is ordinary MIMIC and not quarantined). Reasons name ids and lines, never a row's values.
Table and lab rows are one quarantine row each, even when two read alike.
``reason`` starts with a short kind (``nan_gap: ...``) that the report counts by.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from preprocessing import cohort
from preprocessing.cohort import CohortWindows
from preprocessing.mimic_tables import RowProblem
from symile_clinical.formats.atomic import write_text_atomic

QUARANTINE_COLUMNS = ("id", "file", "stage", "reason")
STAGES = ("tables", "cohort", "ecg", "cxr", "labs")
FILE_STAGES = ("ecg", "cxr")  # one row per file, however many admissions chose it


def quarantine_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts with id, file, stage, reason) as the quarantine table, stable order."""
    frame = pd.DataFrame(rows, columns=list(QUARANTINE_COLUMNS)).astype(str)
    frame["_stage"] = frame["stage"].map({s: i for i, s in enumerate(STAGES)}).fillna(len(STAGES))
    # A file two admissions share is one row. Table and lab rows are never merged: each is
    # a row of its table, and two malformed rows can read alike (same id, same reason).
    files = frame["stage"].isin(FILE_STAGES)
    repeated = frame.duplicated(["stage", "id", "file", "reason"]) & files
    frame = frame.loc[~repeated]
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
            "reason": "malformed_valuenum: valuenum is not a number",
        }
        for labevent_id in malformed["labevent_id"]
    ]


def table_rows(problems: list[RowProblem], root: Path, labevents: Path) -> list[dict]:
    """Quarantine rows of table rows left out: stage ``labs`` for labevents, else ``tables``."""
    from preprocessing.layout import relative_to_root

    return [
        problem.quarantine_row(
            relative_to_root(problem.table, root),
            "labs" if problem.table == labevents else "tables",
        )
        for problem in problems
    ]


def write_quarantine(frame: pd.DataFrame, path: Path) -> None:
    """Write quarantine.csv atomically."""
    write_text_atomic(path, frame.to_csv(index=False, lineterminator="\n"))
