"""Simulate one patient's admissions: write their ECG and CXR files, return their table rows.

Everything a patient gets comes from generators seeded by (seed, patient index) and
(seed, admission index), and identifiers come from bijective scrambles of those indices,
so the output does not depend on which process simulates which patient.

Timing, per admission (hours relative to admittime; the paper's windows are ECG and labs
in [-24, 24] and the CXR in (24, 72]):
- ECG: 'window' (86%) first ECG in [-6, 20], sometimes a second one later outside;
  'outside' (7%) only at [30, 90] after or before admission; 'none' (7%).
- labs: 'window' (92%) first draw in [-6, 4] (before admittime: ED labs, hadm_id empty,
  as in MIMIC), often repeats; 'late' (4%) first draw in [26, 60]; 'none' (4%).
- CXR: 'window' (80%) a study in [24.5, 71.5] (frontal + often lateral), sometimes an
  earlier ED study in [-3, 20]; 'outside' (10%) only at [2, 22] or [75, 140]; 'none' (10%).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from preprocessing import layout
from preprocessing.lab_catalog import lab_by_itemid
from preprocessing.layout import report_path
from preprocessing.synth import corrupt, dicom_writer, error_rates
from preprocessing.synth.cxr_phantom import render_chest
from preprocessing.synth.ecg_waveform import synthesize_ecg_with_beats
from preprocessing.synth.labs_generator import (
    PANELS,
    SPECIMEN_OF_PANEL,
    LabDraw,
    format_value,
    lab_draws,
    lab_values,
)
from preprocessing.synth.machine_statements import machine_measurements_row
from preprocessing.synth.radiology_report import labeler_row, write_report
from preprocessing.synth.state import (
    N_MARKERS,
    AdmissionState,
    PatientTraits,
    sample_admission,
    sample_patient,
)
from preprocessing.synth.wfdb_writer import write_ecg_record

PATIENT_STREAM, ADMISSION_STREAM = 0, 1
# The label sources' error model draws from its own stream, so that adding it changed no
# byte of the files written before it (2 is plan_cohort's, 99 the identifiers').
LABEL_SOURCE_STREAM = 3
MAX_ADMISSIONS_PER_PATIENT = 4
ECGS_PER_ADMISSION = 4  # id slots reserved per admission
CXR_STUDIES_PER_ADMISSION = 2
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022")
ADMISSION_TYPES = (
    ("EW EMER.", 0.55),
    ("OBSERVATION ADMIT", 0.12),
    ("URGENT", 0.1),
    ("ELECTIVE", 0.08),
    ("EU OBSERVATION", 0.08),
    ("DIRECT EMER.", 0.07),
)
LOCATIONS = (
    "EMERGENCY ROOM",
    "PHYSICIAN REFERRAL",
    "TRANSFER FROM HOSPITAL",
    "WALK-IN/SELF REFERRAL",
)
DISCHARGES = ("HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB")
INSURANCE = ("Medicare", "Medicaid", "Other")
MARITAL = ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED")
RACES = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "OTHER")


@dataclass(frozen=True)
class IdScramble:
    """Bijective, seed-dependent maps from indices to realistic-looking MIMIC identifiers."""

    a: int
    b: int
    modulus: int = 10_000_000

    @classmethod
    def from_seed(cls, seed: int, stream: int) -> IdScramble:
        """Multiplier coprime with 10^7 (odd, not a multiple of 5), offset; one per id kind."""
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(99, stream)))
        a = int(rng.integers(1_000_000, 9_000_000)) | 1
        while a % 5 == 0:
            a += 2
        return cls(a=a, b=int(rng.integers(0, 10_000_000)))

    def __call__(self, base: int, k: int) -> int:
        """base + a permutation of k in [0, 10^7)."""
        if not 0 <= k < self.modulus:
            raise ValueError(f"identifier index {k} out of range")
        return base + (self.a * k + self.b) % self.modulus


@dataclass(frozen=True)
class CohortIds:
    """One independent scramble per identifier kind, so that ids of one patient look unrelated."""

    subject: IdScramble
    hadm: IdScramble
    ecg_study: IdScramble
    cxr_study: IdScramble
    specimen: IdScramble

    @classmethod
    def from_seed(cls, seed: int) -> CohortIds:
        """All scrambles of a cohort, derived from its seed."""
        return cls(*(IdScramble.from_seed(seed, stream) for stream in range(5)))


@dataclass(frozen=True)
class PatientPlan:
    """Which patient to simulate: its index, admission count and first global admission index."""

    index: int
    n_admissions: int
    first_admission: int


@dataclass(frozen=True)
class SimContext:
    """What every worker needs besides the plan (picklable)."""

    root: Path
    seed: int
    joint_markers: int
    corrupt_fraction: float
    cxr_max_size: int | None
    ids: CohortIds


@dataclass
class PatientRows:
    """Table rows produced for a group of patients, in patient then admission order."""

    patients: list[tuple] = field(default_factory=list)
    admissions: list[tuple] = field(default_factory=list)
    labs: list[tuple] = field(default_factory=list)  # LAB_ROW_COLUMNS
    ecg_records: list[tuple] = field(default_factory=list)
    cxr_records: list[tuple] = field(default_factory=list)
    cxr_metadata: list[tuple] = field(default_factory=list)
    truth: list[tuple] = field(default_factory=list)
    corrupted: list[tuple] = field(default_factory=list)
    machine_measurements: list[tuple] = field(default_factory=list)
    chexpert: list[tuple] = field(default_factory=list)
    negbio: list[tuple] = field(default_factory=list)

    def extend(self, other: PatientRows) -> None:
        """Append another group's rows after this group's."""
        for name in self.__dataclass_fields__:
            getattr(self, name).extend(getattr(other, name))


# Lab rows leave the workers without labevent_id and with a per-patient specimen key;
# the last two columns carry a corruption reason (or "") that the writer turns into a
# CORRUPTED.csv row once labevent_id is known, and the admission the row belongs to (ED
# labs drawn before admittime have an empty hadm_id, as in MIMIC).
LAB_ROW_COLUMNS = (
    *(
        "specimen_key" if c == "specimen_id" else c
        for c in layout.LABEVENTS_COLUMNS
        if c != "labevent_id"
    ),
    "corrupt_reason",
    "admission_hadm_id",
)
TRUTH_COLUMNS = (
    "subject_id",
    "hadm_id",
    "ecg_timing",
    "lab_timing",
    "cxr_timing",
    "ecg_study_id",
    "cxr_study_id",
    "cxr_dicom_id",
    "corrupt_kind",
    "joint_markers",
    *(f"ecg_bit_{k}" for k in range(N_MARKERS)),
    *(f"lab_bit_{k}" for k in range(N_MARKERS)),
    *(f"cxr_bit_{k}" for k in range(N_MARKERS)),
    "heart_failure",
    "hf_exacerbation",
    "pneumonia",
    "acute_kidney_injury",
    "myocardial_infarction",
    "atrial_fibrillation",
    "paced",
    "hypertension_lvh",
    "heart_rate",
    "potassium",
    "creatinine",
    "hemoglobin",
    "cardiothoracic_ratio",
    "effusion_left",
    "effusion_right",
    "oedema",
    "consolidation",
)


def _choose(rng: np.random.Generator, options_weights) -> str:
    names = [o for o, _ in options_weights]
    p = np.asarray([w for _, w in options_weights], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _fmt(t: datetime | None) -> str:
    return "" if t is None else t.strftime(TIME_FORMAT)


def _provider(rng: np.random.Generator) -> str:
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "P" + "".join(chars[i] for i in rng.integers(0, len(chars), size=5))


def dicom_id_for(seed: int, *parts: int) -> str:
    """A MIMIC-CXR-style dicom_id (five dash-separated groups of 8 hex digits)."""
    h = hashlib.blake2b(f"{seed}|{'|'.join(map(str, parts))}".encode(), digest_size=20).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def _hours(t0: datetime, h: float) -> datetime:
    return (t0 + timedelta(hours=float(h))).replace(microsecond=0)


def _minutes(t: datetime | None) -> datetime | None:
    """Admission-table times are recorded to the minute."""
    return None if t is None else t.replace(second=0)


def simulate_patients(plans: list[PatientPlan], ctx: SimContext) -> PatientRows:
    """Simulate a group of patients; writes their WFDB and DICOM files under ctx.root."""
    rows = PatientRows()
    for plan in plans:
        rows.extend(_simulate_patient(plan, ctx))
    return rows


def _simulate_patient(plan: PatientPlan, ctx: SimContext) -> PatientRows:
    rng = np.random.default_rng(
        np.random.SeedSequence(ctx.seed, spawn_key=(PATIENT_STREAM, plan.index))
    )
    patient = sample_patient(rng)
    subject_id = ctx.ids.subject(10_000_000, plan.index)
    anchor_year = int(rng.integers(2110, 2186))
    t = datetime(anchor_year, 1, 1) + timedelta(days=float(rng.uniform(0, 900)))
    t = t.replace(second=0, microsecond=0)
    out = PatientRows()
    dod = ""
    for a in range(plan.n_admissions):
        last = a == plan.n_admissions - 1
        adm_rows, discharge, died = _simulate_admission(plan, a, ctx, patient, subject_id, t, last)
        out.extend(adm_rows)
        if died:
            dod = discharge.strftime("%Y-%m-%d")
        t = (discharge + timedelta(days=float(rng.uniform(20, 400)))).replace(second=0)
    out.patients.insert(
        0,
        (
            subject_id,
            patient.gender,
            patient.anchor_age,
            anchor_year,
            YEAR_GROUPS[int(rng.integers(len(YEAR_GROUPS)))],
            dod,
        ),
    )
    return out


@dataclass(frozen=True)
class _Admission:
    """Everything the parts of one admission's simulation share."""

    ctx: SimContext
    root: layout.MimicRoot
    rng: np.random.Generator
    label_rng: np.random.Generator  # the label sources' error model (LABEL_SOURCE_STREAM)
    patient: PatientTraits
    state: AdmissionState
    subject_id: int
    hadm_id: int
    admittime: datetime
    index: int  # global admission index
    corrupt_kind: str


def _simulate_admission(
    plan: PatientPlan,
    a: int,
    ctx: SimContext,
    patient: PatientTraits,
    subject_id: int,
    admittime: datetime,
    last: bool,
) -> tuple[PatientRows, datetime, bool]:
    adm_index = plan.first_admission + a
    rng = np.random.default_rng(
        np.random.SeedSequence(ctx.seed, spawn_key=(ADMISSION_STREAM, adm_index))
    )
    state = sample_admission(rng, patient, ctx.joint_markers)
    ecg_timing = _choose(rng, (("window", 0.86), ("outside", 0.07), ("none", 0.07)))
    lab_timing = _choose(rng, (("window", 0.92), ("late", 0.04), ("none", 0.04)))
    cxr_timing = _choose(rng, (("window", 0.80), ("outside", 0.10), ("none", 0.10)))
    draws = lab_draws(rng, patient, state, lab_timing)
    adm = _Admission(
        ctx=ctx,
        root=layout.MimicRoot(ctx.root),
        rng=rng,
        label_rng=np.random.default_rng(
            np.random.SeedSequence(ctx.seed, spawn_key=(LABEL_SOURCE_STREAM, adm_index))
        ),
        patient=patient,
        state=state,
        subject_id=subject_id,
        hadm_id=ctx.ids.hadm(20_000_000, plan.index * MAX_ADMISSIONS_PER_PATIENT + a),
        admittime=admittime,
        index=adm_index,
        corrupt_kind=_corruption(rng, ctx.corrupt_fraction, ecg_timing, cxr_timing, lab_timing),
    )
    out = PatientRows()
    ecg_study, ecg_hours = _write_ecgs(out, adm, ecg_timing)
    cxr_study, dicom_id, cxr_hours = _write_cxrs(out, adm, cxr_timing)
    _add_lab_rows(out, adm, draws)
    last_event = max([0.0, *ecg_hours, *cxr_hours, *(d.hours for d in draws)])
    dischtime, died = _add_admission_row(out, adm, last_event, last)
    out.truth.append(
        _truth_row(
            adm,
            (ecg_timing, lab_timing, cxr_timing),
            ecg_study,
            cxr_study,
            dicom_id,
        )
    )
    return out, dischtime, died


def _corruption(
    rng: np.random.Generator, fraction: float, ecg_timing: str, cxr_timing: str, lab_timing: str
) -> str:
    """The kind of broken file this admission gets ("" for none).

    ECG and CXR files are broken only in admissions whose three modalities all fall in the
    paper's windows: preprocessing opens exactly those files, so its quarantine must list
    exactly the files in CORRUPTED.csv. Lab rows are all read, whatever the admission.
    """
    if not rng.random() < fraction:
        return ""
    kinds: list[str] = []
    if ecg_timing == cxr_timing == lab_timing == "window":
        kinds += [*corrupt.ECG_KINDS, *corrupt.CXR_KINDS]
    if lab_timing == "window":
        kinds.append(corrupt.LAB_NON_NUMERIC)
    return kinds[int(rng.integers(len(kinds)))] if kinds else ""


def _write_ecgs(out: PatientRows, adm: _Admission, timing: str) -> tuple[int, list[float]]:
    """Write the admission's ECGs; returns (first ECG's study_id or 0, hours of each ECG)."""
    rng = adm.rng
    hours: list[float] = []
    if timing == "window":
        hours.append(rng.uniform(-6.0, 20.0))
        if rng.random() < 0.3:
            hours.append(rng.uniform(30.0, 60.0))
    elif timing == "outside":
        hours.append(rng.uniform(30.0, 90.0) * (1 if rng.random() < 0.6 else -1))
    first_study = 0
    for j, h in enumerate(hours):
        study_id = adm.ctx.ids.ecg_study(40_000_000, adm.index * ECGS_PER_ADMISSION + j)
        ecg_time = _hours(adm.admittime, h)
        signal, beats = synthesize_ecg_with_beats(rng, adm.patient, adm.state)
        rel = write_ecg_record(adm.root.ecg, adm.subject_id, study_id, ecg_time, signal)
        out.ecg_records.append((adm.subject_id, study_id, study_id, _fmt(ecg_time), rel))
        out.machine_measurements.append(
            machine_measurements_row(adm.label_rng, beats, adm.subject_id, study_id, _fmt(ecg_time))
        )
        if j == 0:
            first_study = study_id
            if adm.corrupt_kind in corrupt.ECG_KINDS:
                _break_ecg(out, adm, rel)
    return first_study, hours


def _break_ecg(out: PatientRows, adm: _Admission, rel: str) -> None:
    base = adm.root.ecg / rel
    if adm.corrupt_kind == corrupt.ECG_TRUNCATED:
        reason = corrupt.truncate_dat(base.with_suffix(".dat"), adm.rng)
        file = f"{layout.ECG_DIR.as_posix()}/{rel}.dat"
    else:
        reason = corrupt.mismatch_header(base.with_suffix(".hea"))
        file = f"{layout.ECG_DIR.as_posix()}/{rel}.hea"
    out.corrupted.append((adm.corrupt_kind, file, adm.subject_id, adm.hadm_id, reason))


def _write_cxrs(out: PatientRows, adm: _Admission, timing: str) -> tuple[int, str, list[float]]:
    """Write the admission's CXR studies; returns (window study_id, its frontal dicom_id, hours)."""
    rng = adm.rng
    studies: list[tuple[float, str, bool]] = []  # (hours, frontal view, in the window)
    frontal = "AP" if rng.random() < 0.25 + 0.5 * adm.state.sickness else "PA"
    if timing == "window":
        if rng.random() < 0.25:  # an earlier ED film, outside the window
            studies.append((rng.uniform(-3.0, 20.0), "AP", False))
        studies.append((rng.uniform(24.5, 71.5), frontal, True))
    elif timing == "outside":
        h = rng.uniform(2.0, 22.0) if rng.random() < 0.5 else rng.uniform(75.0, 140.0)
        studies.append((h, frontal, False))
    window_study, window_dicom = 0, ""
    for j, (h, view, in_window) in enumerate(studies):
        study_id = adm.ctx.ids.cxr_study(50_000_000, adm.index * CXR_STUDIES_PER_ADMISSION + j)
        study_time = _hours(adm.admittime, h) + timedelta(milliseconds=int(rng.integers(0, 1000)))
        kind = adm.corrupt_kind if (in_window and adm.corrupt_kind in corrupt.CXR_KINDS) else ""
        dicom_id = _write_cxr_study(out, adm, study_id, study_time, view, j, kind)
        if in_window:
            window_study, window_dicom = study_id, dicom_id
    return window_study, window_dicom, [h for h, _, _ in studies]


def _add_lab_rows(out: PatientRows, adm: _Admission, draws: list[LabDraw]) -> None:
    """Lab rows of every draw; one row of the first draw is broken if the admission says so."""
    rng = adm.rng
    values = lab_values(rng, adm.patient, adm.state)
    broken_row = -1
    if adm.corrupt_kind == corrupt.LAB_NON_NUMERIC:
        broken_row = int(rng.integers(len({i for p in draws[0].panels for i in PANELS[p]})))
    for d_index, draw in enumerate(draws):
        charttime = _hours(adm.admittime, draw.hours)
        storetime = charttime + timedelta(minutes=int(rng.integers(20, 180)))
        # ED labs drawn before admission carry no hadm_id in MIMIC-IV.
        lab_hadm = adm.hadm_id if charttime >= adm.admittime else ""
        provider = _provider(rng) if rng.random() < 0.5 else ""
        tube_of: dict[int, str] = {}  # itemid -> specimen tube; lactate is in two panels
        for panel in draw.panels:
            for itemid in PANELS[panel]:
                tube_of.setdefault(itemid, SPECIMEN_OF_PANEL[panel])
        for row_index, (itemid, tube) in enumerate(tube_of.items()):
            common = (
                adm.subject_id,
                lab_hadm,
                (adm.index, d_index, tube),
                itemid,
                provider,
                _fmt(charttime),
                _fmt(storetime),
            )
            reason = ""
            if d_index == 0 and row_index == broken_row:
                texts = corrupt.NON_NUMERIC_TEXTS
                text = texts[int(rng.integers(len(texts)))]
                row = _broken_lab_row(common, itemid, text, draw.priority)
                reason = f"valuenum {text!r} is not a number"
            else:
                value = values[itemid]
                if d_index > 0:  # repeat draws drift a little
                    value *= float(rng.lognormal(0.0, 0.03))
                row = _lab_row(common, itemid, value, draw.priority, rng)
            out.labs.append((*row, reason, adm.hadm_id))


def _add_admission_row(
    out: PatientRows, adm: _Admission, last_event_hours: float, last: bool
) -> tuple[datetime, bool]:
    """The admissions-table row; returns (dischtime, died in hospital)."""
    rng = adm.rng
    los_days = max(1.0, float(rng.lognormal(np.log(4.5), 0.6)))
    stay_hours = max(los_days * 24.0, last_event_hours + 2.0 + rng.uniform(0, 24))
    dischtime = _hours(adm.admittime, stay_hours)
    died = last and rng.random() < 0.02 + 0.08 * adm.state.sickness
    adm_type = _choose(rng, ADMISSION_TYPES)
    from_ed = adm_type in ("EW EMER.", "EU OBSERVATION")
    edreg = _hours(adm.admittime, -rng.uniform(2.0, 10.0)) if from_ed else None
    edout = _hours(adm.admittime, rng.uniform(0.0, 1.0)) if from_ed else None
    out.admissions.append(
        (
            adm.subject_id,
            adm.hadm_id,
            _fmt(adm.admittime),
            _fmt(_minutes(dischtime)),
            _fmt(_minutes(dischtime)) if died else "",
            adm_type,
            _provider(rng),
            "EMERGENCY ROOM" if from_ed else LOCATIONS[int(rng.integers(1, len(LOCATIONS)))],
            "DIED" if died else DISCHARGES[int(rng.integers(len(DISCHARGES)))],
            INSURANCE[int(rng.integers(len(INSURANCE)))],
            "ENGLISH",
            MARITAL[int(rng.integers(len(MARITAL)))],
            RACES[int(rng.integers(len(RACES)))],
            _fmt(_minutes(edreg)),
            _fmt(_minutes(edout)),
            int(died),
        )
    )
    return dischtime, died


def _broken_lab_row(common: tuple, itemid: int, text: str, priority: str) -> tuple:
    """A deliberately corrupt labevents row: text where valuenum's number belongs."""
    item = lab_by_itemid(itemid)
    return (*common, text, text, item.unit, item.normal_low, item.normal_high, "", priority, "")


def _lab_row(
    common: tuple, itemid: int, value: float, priority: str, rng: np.random.Generator
) -> tuple:
    """A labevents row (without labevent_id; specimen as a key to be numbered later)."""
    item = lab_by_itemid(itemid)
    lo, hi = item.normal_low, item.normal_high
    r = rng.random()
    if r < 0.004:  # de-identified free text, as the release has
        return (*common, "___", np.nan, "", lo, hi, "", priority, "___")
    if r < 0.006:
        return (*common, "ERROR", np.nan, "", lo, hi, "", priority, "")
    text = format_value(itemid, value)
    num = float(text)
    flag = "abnormal" if (num < lo or num > hi) else ""
    return (*common, text, num, item.unit, lo, hi, flag, priority, "")


def _truth_row(
    adm: _Admission, timings: tuple[str, str, str], ecg_study: int, cxr_study: int, dicom_id: str
) -> tuple:
    """One synth_truth.csv.gz row (TRUTH_COLUMNS): timings, marker bits, the hidden state."""
    patient, state = adm.patient, adm.state
    return (
        adm.subject_id,
        adm.hadm_id,
        *timings,
        ecg_study,
        cxr_study,
        dicom_id,
        adm.corrupt_kind,
        state.joint_markers,
        *state.ecg_bits,
        *state.lab_bits,
        *state.cxr_bits,
        int(patient.heart_failure),
        int(state.hf_exacerbation),
        int(state.pneumonia),
        int(state.acute_kidney_injury),
        int(state.myocardial_infarction),
        int(state.atrial_fibrillation),
        int(state.paced),
        int(patient.hypertension_lvh),
        round(state.heart_rate, 1),
        round(state.potassium, 2),
        round(state.creatinine, 2),
        round(state.hemoglobin, 1),
        round(state.cardiothoracic_ratio, 3),
        round(state.effusion_left, 3),
        round(state.effusion_right, 3),
        round(state.oedema, 3),
        round(state.consolidation, 3),
    )


def _image_size(
    rng: np.random.Generator, view: str, max_size: int | None
) -> tuple[int, int, float]:
    """(rows, columns, pixel spacing mm): 1k-3k matrices over a 35-43 cm field, capped."""
    big = int(rng.integers(2000, 3057)) if rng.random() < 0.85 else int(rng.integers(1000, 2000))
    aspect = rng.uniform(0.8, 1.0)
    small = int(big * aspect)
    rows, cols = (big, small) if view == "PA" or rng.random() < 0.5 else (small, big)
    fov_mm = rng.uniform(350.0, 430.0)
    if max_size is not None and max(rows, cols) > max_size:
        scale = max_size / max(rows, cols)
        rows, cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    return rows, cols, fov_mm / max(rows, cols)


def _write_cxr_study(
    out: PatientRows,
    adm: _Admission,
    study_id: int,
    study_time: datetime,
    frontal_view: str,
    study_index: int,
    corrupt_kind: str,
) -> str:
    """Write one study's images (frontal, and often a lateral); returns the frontal dicom_id."""
    rng, ctx, subject_id = adm.rng, adm.ctx, adm.subject_id
    views = [frontal_view]
    if rng.random() < (0.85 if frontal_view == "PA" else 0.1):
        views.append("LATERAL" if rng.random() < 0.7 else "LL")
    study = dicom_writer.StudyInfo(
        subject_id=subject_id,
        study_id=study_id,
        study_time=study_time,
        study_uid=dicom_writer.deterministic_uid("study", ctx.seed, study_id),
        procedure=dicom_writer.PROCEDURES[frontal_view],
        erect=frontal_view == "PA" or rng.random() < 0.3,
    )
    frontal_id = ""
    for i, view in enumerate(views):
        dicom_id = dicom_id_for(ctx.seed, adm.index, study_index, i)
        rows, cols, spacing = _image_size(rng, view, ctx.cxr_max_size)
        encoding = dicom_writer.sample_encoding(rng)
        phantom_view = "LATERAL" if view == "LL" else view
        image = render_chest(rng, adm.patient, adm.state, phantom_view, rows, cols)
        pixels = dicom_writer.stored_pixels(image, encoding, rng)
        rel = layout.cxr_image_path(subject_id, study_id, dicom_id)
        path = adm.root.cxr / rel
        if i == 0 and corrupt_kind == corrupt.CXR_NOT_AN_IMAGE:
            ds = dicom_writer.build_report_dataset(study, dicom_id)
            reason = "DICOM is a Basic Text SR (Modality SR), not an image"
        else:
            ds = dicom_writer.build_image_dataset(
                study, dicom_id, view, i + 1, pixels, encoding, spacing
            )
            reason = ""
            if i == 0 and corrupt_kind == corrupt.CXR_NO_PIXEL_DATA:
                del ds.PixelData
                reason = "image DICOM without Pixel Data (7FE0,0010)"
        dicom_writer.save_dataset(ds, path)
        if reason:
            file = f"{layout.CXR_DIR.as_posix()}/{rel}"
            out.corrupted.append((corrupt_kind, file, subject_id, adm.hadm_id, reason))
        out.cxr_records.append((subject_id, study_id, dicom_id, rel))
        view_meaning = dicom_writer.VIEW_CODES[view][1]
        out.cxr_metadata.append(
            (
                dicom_id,
                subject_id,
                study_id,
                study.procedure,
                view,
                rows,
                cols,
                int(study_time.strftime("%Y%m%d")),
                float(study_time.strftime("%H%M%S.%f")[:10]),
                study.procedure,
                view_meaning,
                "Erect" if study.erect else "Recumbent",
            )
        )
        if i == 0:
            frontal_id = dicom_id
    _write_report(out, adm, study_id, frontal_view)
    return frontal_id


def _write_report(out: PatientRows, adm: _Admission, study_id: int, view: str) -> None:
    """The study's report file and its CheXpert and NegBio rows (label-source draws only)."""
    report = write_report(adm.label_rng, adm.state, view)
    path = adm.root.cxr / report_path(adm.subject_id, study_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.text(view))
    for rows, f1 in ((out.chexpert, error_rates.CHEXPERT_F1), (out.negbio, error_rates.NEGBIO_F1)):
        rows.append((adm.subject_id, study_id, *labeler_row(adm.label_rng, report, f1)))
