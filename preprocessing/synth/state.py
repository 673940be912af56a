"""The clinical model: lasting patient traits, the state of each admission, and marker bits.

Every modality is drawn from an ``AdmissionState``, so the links a clinician expects hold
(heart failure: big heart, effusions, oedema, high NT-proBNP, tachycardia; kidney injury:
high creatinine, urea and potassium, peaked T waves; pneumonia: consolidation, high white
count and lactate; a pacemaker: paced ECG and a device on the radiograph).

On top of that, each admission carries ``N_MARKERS`` binary *marker findings* shown on the
chest radiograph (``cxr_bits``). Each has a bit expressed in the ECG (``ecg_bits``) and one
expressed in the labs (``lab_bits``). A marker is either

- pairwise: ``ecg_bit == lab_bit == cxr_bit`` (either modality alone predicts it), or
- joint-only: ``ecg_bit`` and ``lab_bit`` independent fair coins and
  ``cxr_bit = ecg_bit XOR lab_bit``; each alone is independent of ``cxr_bit`` (chance),
  together they determine it.

``joint_marker_count(F)`` of the ``N_MARKERS`` markers (the first ones) are joint-only; the
rest are pairwise. Marker bits are drawn independently of everything clinical, so clinical
content never leaks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_MARKERS = 4
LUNG_ZONES = ("RUL", "RML", "RLL", "LUL", "LLL")


def joint_marker_count(joint_fraction: float) -> int:
    """How many of the N_MARKERS markers are joint-only (XOR) for a joint fraction in [0, 1]."""
    if not 0.0 <= joint_fraction <= 1.0:
        raise ValueError(f"joint fraction must be in [0, 1], got {joint_fraction}")
    return round(joint_fraction * N_MARKERS)


@dataclass(frozen=True)
class PatientTraits:
    """What stays with a patient across admissions (chronic conditions, anatomy)."""

    gender: str
    anchor_age: int
    hypertension_lvh: bool
    heart_failure: bool
    chronic_kidney_disease: bool
    chronic_af: bool
    pacemaker: bool
    qrs_axis_deg: float
    hemoglobin_baseline: float  # g/dL
    creatinine_baseline: float  # mg/dL
    thorax_width: float  # fraction of image width
    heart_offset: float  # horizontal shift of the cardiac silhouette, fraction of width
    body_habitus: float  # soft-tissue density multiplier
    lead_gain: np.ndarray = field(repr=False)  # [12] per-lead amplitude factor, unitless


@dataclass(frozen=True)
class AdmissionState:
    """The clinical state of one admission, from which ECG, labs and CXR are drawn."""

    pneumonia: bool
    consolidation_zone: str
    hf_exacerbation: bool
    acute_kidney_injury: bool
    myocardial_infarction: bool
    mi_territory: str  # "inferior" | "anterior"
    bleeding: bool
    atrial_fibrillation: bool
    paced: bool
    heart_rate: float  # beats per minute
    potassium: float  # mEq/L
    creatinine: float  # mg/dL
    hemoglobin: float  # g/dL
    wbc: float  # K/uL
    lactate: float  # mmol/L
    cardiothoracic_ratio: float
    effusion_left: float  # 0 (none) .. 1 (large)
    effusion_right: float
    oedema: float  # 0 .. 1
    consolidation: float  # 0 .. 1
    sickness: float  # 0 .. 1, drives ordering patterns and AP (portable) views
    ecg_bits: tuple[int, ...]
    lab_bits: tuple[int, ...]
    cxr_bits: tuple[int, ...]
    joint_markers: int  # the first `joint_markers` markers are joint-only


def sample_patient(rng: np.random.Generator) -> PatientTraits:
    """Draw one patient's lasting traits."""
    age = int(np.clip(rng.normal(64, 16), 18, 91))
    old = (age - 18) / 73.0
    hf = bool(rng.random() < 0.06 + 0.2 * old)
    ckd = bool(rng.random() < 0.05 + 0.15 * old)
    gender = "F" if rng.random() < 0.48 else "M"
    left_axis = rng.random() < 0.1
    return PatientTraits(
        gender=gender,
        anchor_age=age,
        hypertension_lvh=bool(rng.random() < 0.08 + 0.12 * old),
        heart_failure=hf,
        chronic_kidney_disease=ckd,
        chronic_af=bool(rng.random() < 0.02 + 0.1 * old),
        pacemaker=bool(rng.random() < 0.01 + 0.06 * old),
        qrs_axis_deg=float(rng.normal(-40, 12) if left_axis else rng.normal(50, 20)),
        hemoglobin_baseline=float(
            rng.normal(13.2 if gender == "F" else 14.6, 1.0) - (1.5 if ckd else 0.0)
        ),
        creatinine_baseline=float(
            rng.lognormal(np.log(0.8 if gender == "F" else 1.0), 0.15) * (2.2 if ckd else 1.0)
        ),
        thorax_width=float(rng.uniform(0.62, 0.74)),
        heart_offset=float(rng.normal(0.06, 0.02)),
        body_habitus=float(rng.uniform(0.8, 1.25)),
        lead_gain=rng.uniform(0.8, 1.2, size=12),
    )


def _marker_bits(
    rng: np.random.Generator, joint_markers: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    ecg, lab, cxr = [], [], []
    for k in range(N_MARKERS):
        if k < joint_markers:
            e_bit, l_bit = int(rng.integers(2)), int(rng.integers(2))
            c_bit = e_bit ^ l_bit
        else:
            e_bit = l_bit = c_bit = int(rng.integers(2))
        ecg.append(e_bit)
        lab.append(l_bit)
        cxr.append(c_bit)
    return tuple(ecg), tuple(lab), tuple(cxr)


def sample_admission(
    rng: np.random.Generator, patient: PatientTraits, joint_markers: int
) -> AdmissionState:
    """Draw one admission's state given the patient's traits."""
    pneumonia = bool(rng.random() < 0.2)
    hf_exacerbation = bool(rng.random() < (0.45 if patient.heart_failure else 0.03))
    aki = bool(rng.random() < (0.3 if patient.chronic_kidney_disease else 0.08) + 0.1 * pneumonia)
    mi = bool(rng.random() < 0.06)
    bleeding = bool(rng.random() < 0.05)
    af = patient.chronic_af or bool(rng.random() < 0.03 + 0.05 * pneumonia)
    paced = patient.pacemaker and bool(rng.random() < 0.85)

    creatinine = patient.creatinine_baseline * (rng.uniform(1.8, 4.0) if aki else 1.0)
    creatinine *= float(rng.lognormal(0, 0.08))
    renal = min(1.0, max(0.0, (creatinine - 1.0) / 4.0))
    potassium = float(rng.normal(4.1 + 1.1 * renal, 0.35))
    if rng.random() < 0.06:  # diuretics, vomiting: hypokalaemia
        potassium = float(rng.uniform(2.6, 3.3))
    hemoglobin = patient.hemoglobin_baseline - (rng.uniform(2.0, 5.0) if bleeding else 0.0)
    hemoglobin = float(max(5.0, hemoglobin + rng.normal(0, 0.5)))
    wbc = float(rng.lognormal(np.log(14.0 if pneumonia else 7.5), 0.3))
    lactate = float(rng.lognormal(np.log(2.6 if pneumonia else 1.2), 0.35))

    ctr = 0.45 + (0.1 if patient.heart_failure else 0.0) + (0.04 if patient.hypertension_lvh else 0)
    ctr += 0.03 if hf_exacerbation else 0.0
    ctr = float(np.clip(ctr + rng.normal(0, 0.025), 0.36, 0.72))
    effusion_left = float(rng.uniform(0.3, 0.9)) if hf_exacerbation and rng.random() < 0.7 else 0.0
    effusion_right = float(rng.uniform(0.3, 1.0)) if hf_exacerbation and rng.random() < 0.8 else 0.0
    if pneumonia and rng.random() < 0.25:  # parapneumonic effusion
        effusion_right = max(effusion_right, float(rng.uniform(0.2, 0.5)))
    oedema = float(rng.uniform(0.4, 1.0)) if hf_exacerbation else float(rng.uniform(0, 0.1))
    consolidation = float(rng.uniform(0.5, 1.0)) if pneumonia else 0.0

    rate = 72.0 + 18 * pneumonia + 15 * hf_exacerbation + 12 * bleeding + (15 if af else 0)
    rate = float(np.clip(rate + rng.normal(0, 9), 42, 160))
    if paced:
        rate = float(rng.choice([60.0, 70.0, 80.0]))
    sickness = float(
        np.clip(0.2 + 0.3 * pneumonia + 0.3 * hf_exacerbation + 0.2 * mi + 0.2 * aki, 0, 1)
    )
    ecg_bits, lab_bits, cxr_bits = _marker_bits(rng, joint_markers)
    return AdmissionState(
        pneumonia=pneumonia,
        consolidation_zone=str(rng.choice(LUNG_ZONES)),
        hf_exacerbation=hf_exacerbation,
        acute_kidney_injury=aki,
        myocardial_infarction=mi,
        mi_territory=str(rng.choice(["inferior", "anterior"])),
        bleeding=bleeding,
        atrial_fibrillation=af and not paced,
        paced=paced,
        heart_rate=rate,
        potassium=potassium,
        creatinine=float(creatinine),
        hemoglobin=hemoglobin,
        wbc=wbc,
        lactate=lactate,
        cardiothoracic_ratio=ctr,
        effusion_left=effusion_left,
        effusion_right=effusion_right,
        oedema=oedema,
        consolidation=consolidation,
        sickness=sickness,
        ecg_bits=ecg_bits,
        lab_bits=lab_bits,
        cxr_bits=cxr_bits,
        joint_markers=joint_markers,
    )
