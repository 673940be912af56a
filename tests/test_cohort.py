"""Cohort joins: vectorised merge_asof against an obviously-correct row-by-row version."""

from __future__ import annotations

import numpy as np
import pandas as pd

from preprocessing.cohort import (
    REASON_NO_CXR,
    REASON_NO_ECG,
    REASON_NO_LABS,
    CohortWindows,
    build_cohort,
    earliest_in_window,
    first_lab_values,
)
from preprocessing.mimic_tables import LabScan, study_datetime

T0 = pd.Timestamp("2180-07-23 08:00:00")


def random_tables(seed: int = 0, n_subjects: int = 40) -> dict[str, pd.DataFrame]:
    """Admissions, ECGs, CXRs and lab rows with times scattered around the windows."""
    rng = np.random.default_rng(seed)
    admissions, ecgs, cxrs, labs = [], [], [], []
    hadm, study, labevent = 20_000_000, 40_000_000, 1
    for subject in range(10_000_000, 10_000_000 + n_subjects):
        for _ in range(rng.integers(1, 4)):
            admit = T0 + pd.Timedelta(hours=float(rng.integers(0, 24 * 20)))
            admissions.append((subject, hadm, admit))
            hadm += 1
            for _ in range(rng.integers(0, 4)):
                ecgs.append(
                    (
                        subject,
                        study,
                        admit + pd.Timedelta(hours=float(rng.integers(-40, 40))),
                        f"e{study}",
                    )
                )
                study += 1
            for _ in range(rng.integers(0, 4)):
                when = admit + pd.Timedelta(hours=float(rng.integers(0, 90)))
                view = rng.choice(["AP", "PA", "LATERAL", ""])
                cxrs.append((f"d{study}", subject, study, view, when, f"c{study}.dcm"))
                study += 1
            for _ in range(rng.integers(0, 8)):
                when = admit + pd.Timedelta(minutes=float(rng.integers(-40 * 60, 40 * 60)))
                labs.append(
                    (labevent, subject, int(rng.choice([1, 2, 3])), when, float(rng.normal()))
                )
                labevent += 1
    return {
        "admissions": pd.DataFrame(admissions, columns=["subject_id", "hadm_id", "admittime"]),
        "ecgs": pd.DataFrame(ecgs, columns=["subject_id", "study_id", "ecg_time", "path"]),
        "cxrs": pd.DataFrame(
            cxrs, columns=["dicom_id", "subject_id", "study_id", "ViewPosition", "cxr_time", "path"]
        ),
        "labs": pd.DataFrame(
            labs, columns=["labevent_id", "subject_id", "itemid", "charttime", "valuenum"]
        ),
    }


def fixed_scan(lab_rows: pd.DataFrame):
    """scan_labs for build_cohort: the given numeric rows, whichever subjects are asked for."""
    malformed = pd.DataFrame(columns=["labevent_id", "subject_id", "itemid", "valuenum_text"])
    return lambda subject_ids: LabScan(lab_rows, malformed, rows_read=len(lab_rows))


def slow_cohort(t: dict[str, pd.DataFrame], windows: CohortWindows, itemids: list[int]) -> dict:
    """The definition written out one admission at a time."""
    h = pd.Timedelta(hours=1)
    result = {}
    for adm in t["admissions"].itertuples():
        ecg = t["ecgs"][(t["ecgs"].subject_id == adm.subject_id)]
        delta = (ecg.ecg_time - adm.admittime) / h
        ecg = ecg[(delta >= windows.ecg_h[0]) & (delta <= windows.ecg_h[1])].sort_values(
            ["ecg_time", "study_id"]
        )
        cxr = t["cxrs"][
            (t["cxrs"].subject_id == adm.subject_id) & t["cxrs"].ViewPosition.isin(["AP", "PA"])
        ]
        delta = (cxr.cxr_time - adm.admittime) / h
        cxr = cxr[(delta > windows.cxr_h[0]) & (delta <= windows.cxr_h[1])].sort_values(
            ["cxr_time", "study_id", "dicom_id"]
        )
        values = []
        for itemid in itemids:
            lab = t["labs"][(t["labs"].subject_id == adm.subject_id) & (t["labs"].itemid == itemid)]
            delta = (lab.charttime - adm.admittime) / h
            lab = lab[(delta >= -24) & (delta <= 24)].sort_values(["charttime", "labevent_id"])
            values.append(lab.valuenum.iloc[0] if len(lab) else np.nan)
        if ecg.empty:
            result[adm.hadm_id] = REASON_NO_ECG
        elif cxr.empty:
            result[adm.hadm_id] = REASON_NO_CXR
        elif np.isnan(values).all():
            result[adm.hadm_id] = REASON_NO_LABS
        else:
            result[adm.hadm_id] = (ecg.study_id.iloc[0], cxr.dicom_id.iloc[0], values)
    return result


def test_vectorised_cohort_matches_row_by_row() -> None:
    t = random_tables()
    windows = CohortWindows()
    cohort = build_cohort(
        t["admissions"], t["ecgs"], t["cxrs"], fixed_scan(t["labs"]), [1, 2, 3], windows
    )
    slow = slow_cohort(t, windows, [1, 2, 3])
    assert cohort.total_admissions == len(t["admissions"])
    assert len(cohort.admissions) + len(cohort.excluded) == len(t["admissions"])
    for row, adm in enumerate(cohort.admissions.itertuples()):
        study, dicom, values = slow[adm.hadm_id]
        assert adm.ecg_study_id == study and adm.dicom_id == dicom
        np.testing.assert_array_equal(cohort.lab_values[row], values)
    for adm in cohort.excluded.itertuples():
        assert slow[adm.hadm_id] == adm.reason
    reasons = set(cohort.excluded["reason"])
    assert {REASON_NO_ECG, REASON_NO_CXR} <= reasons  # the random tables exercise both
    assert len(cohort.admissions) > 5


def test_window_edges_inclusive_and_exclusive() -> None:
    admissions = pd.DataFrame({"subject_id": [1, 2], "hadm_id": [11, 12], "admittime": [T0, T0]})
    ecgs = pd.DataFrame(
        {
            "subject_id": [1, 2],
            "study_id": [1, 2],
            "path": ["a", "b"],
            "ecg_time": [T0 - pd.Timedelta(hours=24), T0 + pd.Timedelta(hours=24, seconds=1)],
        }
    )
    cxrs = pd.DataFrame(
        {
            "dicom_id": ["x", "y", "z"],
            "subject_id": [1, 1, 2],
            "study_id": [5, 6, 7],
            "ViewPosition": ["AP", "PA", "PA"],
            "path": ["x", "y", "z"],
            "cxr_time": [
                T0 + pd.Timedelta(hours=24),
                T0 + pd.Timedelta(hours=72),
                T0 + pd.Timedelta(hours=30),
            ],
        }
    )
    labs = pd.DataFrame(
        {
            "labevent_id": [1, 2],
            "subject_id": [1, 2],
            "itemid": [9, 9],
            "valuenum": [1.0, 2.0],
            "charttime": [T0 + pd.Timedelta(hours=24), T0],
        }
    )
    cohort = build_cohort(admissions, ecgs, cxrs, fixed_scan(labs), [9])
    # Subject 1: ECG at exactly -24 h counts; CXR at exactly +24 h does not, +72 h does.
    assert cohort.admissions["hadm_id"].tolist() == [11]
    assert cohort.admissions["dicom_id"].tolist() == ["y"]
    assert cohort.excluded.set_index("hadm_id").loc[12, "reason"] == REASON_NO_ECG


def test_first_lab_prefers_earliest_and_lowest_id_on_ties() -> None:
    admissions = pd.DataFrame({"subject_id": [1], "hadm_id": [11], "admittime": [T0]})
    labs = pd.DataFrame(
        {
            "labevent_id": [3, 2, 1],
            "subject_id": [1, 1, 1],
            "itemid": [9, 9, 9],
            "charttime": [T0, T0, T0 + pd.Timedelta(hours=1)],
            "valuenum": [30.0, 20.0, 10.0],
        }
    )
    assert first_lab_values(admissions, labs, [9], (-24, 24))[0, 0] == 20.0


def test_study_time_zero_padding() -> None:
    # 5312.5 is 00:53:12.5 and 84400 is 08:44:00, as MIMIC-CXR's numeric StudyTime stores them.
    out = study_datetime(pd.Series([21800723, 21800723]), pd.Series([5312.5, 84400.0]))
    assert out.tolist() == [
        pd.Timestamp("2180-07-23 00:53:12.5"),
        pd.Timestamp("2180-07-23 08:44:00"),
    ]


def test_missing_study_date_or_time_is_no_time_not_midnight() -> None:
    out = study_datetime(
        pd.Series([21800723, np.nan, 21800723]), pd.Series([84400.123, 84400.0, np.nan])
    )
    assert out.iloc[0] == pd.Timestamp("2180-07-23 08:44:00.123")
    assert out.iloc[1:].isna().all()


def test_events_without_a_time_are_in_no_window() -> None:
    admissions = pd.DataFrame({"subject_id": [1, 2], "admittime": [T0, T0]})
    events = pd.DataFrame(
        {
            "subject_id": [1, 2, 2],
            "ecg_time": [pd.NaT, pd.NaT, T0 + pd.Timedelta(hours=1)],
            "ecg_study_id": [10, 20, 21],
        }
    )
    found = earliest_in_window(admissions, events, "ecg_time", (-24, 24))
    assert found["ecg_time"].isna().tolist() == [True, False]
    assert found["ecg_study_id"].iloc[1] == 21
