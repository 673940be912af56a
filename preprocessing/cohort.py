"""The Symile-MIMIC cohort: one ECG, a lab panel and one CXR per hospital admission.

Per admission (MIMIC-IV hosp ``admissions``), following the paper:

- the earliest ECG with ``lo <= ecg_time - admittime <= hi`` (default -24 h, +24 h);
- per chosen lab, the earliest numeric value with ``charttime - admittime`` in the lab
  window (default -24 h, +24 h);
- the earliest CXR with ViewPosition in the chosen views (AP, PA) and
  ``lo < study datetime - admittime <= hi`` (default 24 h, 72 h; exclusive at 24 h).

Admissions lacking an ECG or a CXR, or with no lab at all, are excluded with a reason.
Every join is a vectorised ``merge_asof`` by subject (no row-by-row apply): for each
admission the first event at or after the window start, kept if it is before the end.
``build_cohort`` is the one assembly of these steps (the pipeline's and the tests').
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from preprocessing.mimic_tables import LabScan

REASON_NO_ECG = "no_ecg_in_window"
REASON_NO_CXR = "no_cxr_in_window"
REASON_NO_LABS = "no_labs_in_window"


@dataclass(frozen=True)
class CohortWindows:
    """Time windows in hours relative to admittime, and the CXR views accepted."""

    ecg_h: tuple[float, float] = (-24.0, 24.0)
    lab_h: tuple[float, float] = (-24.0, 24.0)
    cxr_h: tuple[float, float] = (24.0, 72.0)
    cxr_views: tuple[str, ...] = ("AP", "PA")

    def as_json(self) -> dict:
        """The ``cohort`` block of dataset.json."""
        return {
            "ecg_window_h": list(self.ecg_h),
            "lab_window_h": list(self.lab_h),
            "cxr_window_h": list(self.cxr_h),
            "cxr_views": list(self.cxr_views),
        }


@dataclass
class Cohort:
    """Included admissions with their chosen ECG, CXR and lab values; exclusions by reason."""

    admissions: pd.DataFrame  # one row per included admission, index 0..N-1 (build_cohort)
    lab_values: np.ndarray  # float64 [N, L], NaN where not observed
    lab_itemids: list[int]  # the L columns of lab_values
    excluded: pd.DataFrame  # subject_id, hadm_id, reason; by hadm_id
    total_admissions: int
    lab_scan: LabScan  # the labevents pass (rows read, numeric rows, malformed rows)


def earliest_in_window(
    admissions: pd.DataFrame,
    events: pd.DataFrame,
    time_column: str,
    window_h: tuple[float, float],
    start_inclusive: bool = True,
) -> pd.DataFrame:
    """For each admission, the earliest event of its subject inside the window.

    admissions: subject_id, admittime (any index); events: subject_id, `time_column`, ...
    Returns the event columns aligned to `admissions.index` (NaN/NaT where none). Events
    tied on time are resolved by their order in `events` (the first is kept).
    """
    lo, hi = (pd.Timedelta(hours=h) for h in window_h)
    left = pd.DataFrame(
        {
            "subject_id": admissions["subject_id"].to_numpy(),
            # One time unit on both sides (pandas may read us or ns); MIMIC's shifted dates
            # (2100-2214) fit in datetime64[ns].
            "_start": (admissions["admittime"] + lo).to_numpy(dtype="datetime64[ns]"),
            "_end": (admissions["admittime"] + hi).to_numpy(dtype="datetime64[ns]"),
            "_position": np.arange(len(admissions)),
        }
    ).sort_values("_start", kind="stable")
    # An event without a time (NaT) can be in no window, and merge_asof refuses null keys.
    right = events[events[time_column].notna()]
    right = right.drop_duplicates(["subject_id", time_column], keep="first")
    right = right.sort_values(time_column, kind="stable").rename(columns={time_column: "_time"})
    right["_time"] = right["_time"].astype("datetime64[ns]")
    merged = pd.merge_asof(
        left,
        right,
        left_on="_start",
        right_on="_time",
        by="subject_id",
        direction="forward",
        allow_exact_matches=start_inclusive,
    )
    outside = merged["_time"].isna() | (merged["_time"] > merged["_end"])
    value_columns = [c for c in right.columns if c not in ("subject_id",)]
    merged.loc[outside, value_columns] = np.nan
    merged = merged.sort_values("_position").set_index(admissions.index)
    return merged[value_columns].rename(columns={"_time": time_column})


def first_lab_values(
    admissions: pd.DataFrame,
    lab_rows: pd.DataFrame,
    itemids: Sequence[int],
    window_h: tuple[float, float],
) -> np.ndarray:
    """Earliest numeric value per (admission, lab) in the window: float64 [N, L], NaN = none.

    lab_rows: labevent_id, subject_id, itemid, charttime, valuenum (numeric rows only).
    """
    values = np.full((len(admissions), len(itemids)), np.nan)
    if lab_rows.empty or admissions.empty:
        return values
    ordered = lab_rows.sort_values(["itemid", "charttime", "labevent_id"], kind="stable")
    groups = dict(iter(ordered.groupby("itemid", sort=False)))
    for column, itemid in enumerate(itemids):
        rows = groups.get(int(itemid))
        if rows is None:
            continue
        found = earliest_in_window(
            admissions, rows[["subject_id", "charttime", "valuenum"]], "charttime", window_h
        )
        values[:, column] = found["valuenum"].to_numpy(dtype=np.float64)
    return values


def select_modalities(
    admissions: pd.DataFrame,
    ecgs: pd.DataFrame,
    cxrs: pd.DataFrame,
    windows: CohortWindows,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach the chosen ECG and CXR to each admission; split off those lacking one.

    Returns (candidates with ecg_* and cxr_* columns, excluded with a reason).
    """
    ecg_events = ecgs.sort_values(["ecg_time", "study_id"], kind="stable")[
        ["subject_id", "ecg_time", "study_id", "path"]
    ].rename(columns={"study_id": "ecg_study_id", "path": "ecg_path"})
    views = {v.upper() for v in windows.cxr_views}
    cxr_events = cxrs[cxrs["ViewPosition"].str.upper().isin(views)]
    cxr_events = cxr_events.sort_values(["cxr_time", "study_id", "dicom_id"], kind="stable")[
        ["subject_id", "cxr_time", "study_id", "dicom_id", "path"]
    ].rename(columns={"study_id": "cxr_study_id", "path": "cxr_path"})

    ecg = earliest_in_window(admissions, ecg_events, "ecg_time", windows.ecg_h)
    cxr = earliest_in_window(
        admissions, cxr_events, "cxr_time", windows.cxr_h, start_inclusive=False
    )
    joined = pd.concat([admissions, ecg, cxr], axis=1)
    reason = np.where(
        joined["ecg_time"].isna(),
        REASON_NO_ECG,
        np.where(joined["cxr_time"].isna(), REASON_NO_CXR, ""),
    )
    excluded = joined.loc[reason != "", ["subject_id", "hadm_id"]].assign(
        reason=reason[reason != ""]
    )
    candidates = joined.loc[reason == ""].astype({"ecg_study_id": "int64", "cxr_study_id": "int64"})
    return candidates, excluded


def attach_labs(
    candidates: pd.DataFrame,
    lab_rows: pd.DataFrame,
    itemids: Sequence[int],
    windows: CohortWindows,
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Lab values [N, L] for candidates; admissions with no lab at all are excluded."""
    values = first_lab_values(candidates, lab_rows, itemids, windows.lab_h)
    has_lab = np.isfinite(values).any(axis=1)
    excluded = candidates.loc[~has_lab, ["subject_id", "hadm_id"]].assign(reason=REASON_NO_LABS)
    kept = candidates.loc[has_lab]
    return kept, values[has_lab], excluded


def sort_admissions(admissions: pd.DataFrame) -> pd.DataFrame:
    """Deterministic admission order (subject_id, admittime, hadm_id) with a fresh index."""
    return admissions.sort_values(
        ["subject_id", "admittime", "hadm_id"], kind="stable"
    ).reset_index(drop=True)


def build_cohort(
    admissions: pd.DataFrame,
    ecgs: pd.DataFrame,
    cxrs: pd.DataFrame,
    scan_labs: Callable[[np.ndarray], LabScan],
    itemids: Sequence[int] | None,
    windows: CohortWindows = CohortWindows(),
) -> Cohort:
    """Join admissions with ECGs, CXRs and labs (frames as tables.py reads them).

    Labs are read last and only for the admissions that have an ECG and a CXR:
    ``scan_labs(subject_ids)`` returns their labevents (``tables.scan_labevents``, or a
    fixed ``LabScan`` in tests). `itemids` are the lab columns; None takes every lab the
    scan found, in itemid order.
    """
    ordered = sort_admissions(admissions.drop_duplicates("hadm_id"))
    candidates, excluded_modality = select_modalities(ordered, ecgs, cxrs, windows)
    scan = scan_labs(candidates["subject_id"].unique())
    if itemids is None:
        itemids = sorted(int(i) for i in scan.numeric["itemid"].unique())
    kept, values, excluded_labs = attach_labs(candidates, scan.numeric, itemids, windows)
    excluded = pd.concat([excluded_modality, excluded_labs]).sort_values("hadm_id")
    return Cohort(
        admissions=kept.reset_index(drop=True),
        lab_values=values,
        lab_itemids=[int(i) for i in itemids],
        excluded=excluded.reset_index(drop=True),
        total_admissions=len(ordered),
        lab_scan=scan,
    )
