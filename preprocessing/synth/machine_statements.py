"""The ECG cart: measurements and statements of one generated ECG, as MIMIC-IV-ECG writes them.

The cart measures the generated beats (ecg_waveform.BeatParameters) with the measurement
noise the IEC standard allows, states rhythm, conduction, morphology and data quality in
the vocabulary MIMIC-IV-ECG's carts use, from thresholds on what it measured, and errs as
computer interpretation errs against cardiologists (error_rates.py, docs/labels.md).
Everything random here comes from the label-source generator, never the admission's, so
the files the generator wrote before stay byte-identical.
"""

from __future__ import annotations

import numpy as np

from preprocessing.layout import (
    MEASUREMENT_COLUMNS,
    N_REPORTS,
    NO_WAVE,
    NOT_MEASURED,
)
from preprocessing.synth import error_rates as er
from preprocessing.synth.ecg_waveform import BeatParameters

BANDWIDTH = "0.005-150 Hz"
FILTERING = ("60 Hz notch Baseline filter", "60 Hz notch Baseline filter", "Baseline filter")
MEDIAN_BEAT_ORIGIN_S = 0.35  # fiducials are ms from the start of the median beat
CART_IDS = (6702, 6848, 7149, 7217, 8331, 8702)
P_AXIS_DEG = 62.0  # the P-wave vector of ecg_waveform: (0.45, 0.85) in the frontal plane
WANDER_STATED_MV = 0.15  # a cart calls baseline wander above this
WANDER_WARNING_MV = 0.22


def _noise_sd(total: float, other: float) -> float:
    """SD of one fiducial so that a difference with another (SD `other`) has SD `total`."""
    return float(np.sqrt(max(total**2 - other**2, 1.0)))


def measure(rng: np.random.Generator, beats: BeatParameters) -> dict[str, float | None]:
    """Intervals (ms from the median beat's start) and axes with measurement noise."""
    qrs_sd = er.SD_QRS_MS / np.sqrt(2)
    ms = lambda t: 1000 * (t + MEDIAN_BEAT_ORIGIN_S)  # noqa: E731
    out: dict[str, float | None] = {
        "rr_interval": 60000.0 / beats.heart_rate * float(rng.normal(1.0, 0.01)),
        "qrs_onset": ms(beats.qrs_onset) + rng.normal(0, qrs_sd),
        "qrs_end": ms(beats.qrs_end) + rng.normal(0, qrs_sd),
        "t_end": ms(beats.t_end) + rng.normal(0, _noise_sd(er.SD_QT_MS, qrs_sd)),
        "qrs_axis": beats.qrs_axis_deg,
        "t_axis": beats.t_axis_deg,
        "p_onset": None,
        "p_end": None,
        "p_axis": None,
    }
    if beats.p_onset is not None and beats.p_end is not None:
        p_on_sd = _noise_sd(er.SD_PR_MS, qrs_sd)
        out["p_onset"] = ms(beats.p_onset) + rng.normal(0, p_on_sd)
        out["p_end"] = ms(beats.p_end) + rng.normal(0, _noise_sd(er.SD_P_DURATION_MS, p_on_sd))
        out["p_axis"] = P_AXIS_DEG
    return out


def _rhythm(rng: np.random.Generator, beats: BeatParameters, rate: float) -> list[str]:
    sinus = [
        "Sinus bradycardia" if rate < 60 else "Sinus tachycardia" if rate > 100 else "Sinus rhythm"
    ]
    if beats.paced:
        if rng.random() < er.PACED_REVISED:  # the cart misreads the paced tracing
            return sinus if rng.random() < 0.5 else ["Undetermined rhythm"]
        return ["Paced rhythm"]
    if beats.irregular:
        return sinus if rng.random() < er.AF_FALSE_NEGATIVE else ["Atrial fibrillation"]
    if rng.random() < er.AF_CALLED_IN_OTHER_RHYTHMS:
        return ["Atrial fibrillation"]
    return sinus


def _morphology(
    rng: np.random.Generator, present: bool, named: str, vague: str | None
) -> list[str]:
    """A pattern statement: named (Willems 1991), else vaguer or omitted; false ones too."""
    if present:
        r = rng.random()
        if r < er.MORPHOLOGY_CORRECT:
            return [named]
        if vague is not None and r < er.MORPHOLOGY_CORRECT + (1 - er.MORPHOLOGY_CORRECT) / 2:
            return [vague]
        return []
    return [named] if rng.random() < er.MORPHOLOGY_FALSE_STATEMENT else []


def statements(rng: np.random.Generator, beats: BeatParameters, m: dict) -> list[str]:
    """The cart's statements for one ECG, from its measurements and the beats' patterns."""
    rate = 60000.0 / m["rr_interval"]
    out = _rhythm(rng, beats, rate)
    borderline, abnormal = [], []
    if m["p_onset"] is not None and m["qrs_onset"] - m["p_onset"] > 200:
        phrase = "1st degree A-V block" if rng.random() < 0.5 else "Prolonged PR interval"
        abnormal.append(phrase)
    qrs = m["qrs_end"] - m["qrs_onset"]
    if not beats.paced:
        if qrs >= 120:
            abnormal.append("RBBB" if beats.rsr_prime_v1 else "Intraventricular conduction delay")
        elif beats.rsr_prime_v1 and qrs >= 110:
            borderline.append("Incomplete RBBB")
        elif beats.rsr_prime_v1:
            borderline.append("RSR'(V1) - probable normal variant")
        elif rng.random() < er.MORPHOLOGY_FALSE_STATEMENT:
            abnormal.append("Intraventricular conduction delay")
        if m["qrs_axis"] < -30:
            borderline.append("Left axis deviation")
        named = "T wave inversion" if rng.random() < 0.5 else "Anterior T wave changes"
        abnormal += _morphology(
            rng, beats.t_inversion_v1_v3, named, "Nonspecific T wave abnormality"
        )
        lvh = (
            "LVH with secondary repolarization abnormality"
            if beats.lateral_strain
            else ("Left ventricular hypertrophy")
        )
        abnormal += _morphology(rng, beats.lvh_voltage, lvh, None)
        abnormal += _morphology(rng, bool(beats.st_elevation), "Acute MI", None)
        abnormal += _morphology(rng, beats.peaked_t, "Peaked T waves", None)
        abnormal += _morphology(rng, beats.flat_t_u_wave, "Prominent U waves", None)
        qtc = (m["t_end"] - m["qrs_onset"]) / np.sqrt(m["rr_interval"] / 1000.0)
        if qtc > 470:
            borderline.append("Prolonged QT interval")
    abnormal_rhythm = out[0] in ("Atrial fibrillation", "Undetermined rhythm")
    if beats.baseline_wander_mv > WANDER_STATED_MV:
        borderline.append("Baseline wander")
    if beats.baseline_wander_mv > WANDER_WARNING_MV:
        borderline.append("Warning: Data quality may affect interpretation")
    summary = (
        "Abnormal ECG"
        if abnormal or abnormal_rhythm or beats.paced
        else ("Borderline ECG" if borderline or rate < 50 or rate > 110 else "Normal ECG")
    )
    return [*out, *(s for s in abnormal + borderline if s), summary][:N_REPORTS]


def _int(value: float | None) -> int:
    return NO_WAVE if value is None else round(value)


def machine_measurements_row(
    rng: np.random.Generator, beats: BeatParameters, subject_id: int, study_id: int, ecg_time: str
) -> tuple:
    """One machine_measurements.csv row (MACHINE_MEASUREMENTS_COLUMNS order)."""
    m = measure(rng, beats)
    lines = statements(rng, beats, m)
    reports = [*lines, *[""] * (N_REPORTS - len(lines))]
    cart = CART_IDS[int(rng.integers(len(CART_IDS)))]
    filtering = FILTERING[int(rng.integers(len(FILTERING)))]
    values = [_int(m[k]) for k in MEASUREMENT_COLUMNS]
    if beats.paced:  # carts do not measure the P wave and axes of paced beats
        values[1], values[2], values[6] = NOT_MEASURED, NOT_MEASURED, NOT_MEASURED
    return (subject_id, study_id, cart, ecg_time, *reports, BANDWIDTH, filtering, *values)
