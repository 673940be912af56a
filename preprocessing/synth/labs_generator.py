"""Blood lab values that follow an admission's state, and which panels get ordered when.

Values move with the state (renal: creatinine, urea, potassium, phosphate; cardiac:
troponin, CK, NT-proBNP; inflammatory: white count, neutrophils, CRP, lactate; anaemia:
haemoglobin, haematocrit, red cells) and derived labs are computed as the lab computes
them (anion gap, absolute counts, haematocrit from haemoglobin). Missingness follows
ordering habits: panels are ordered together, some almost always (chemistry, blood count),
some only when suspected (troponin when infarction is suspected, NT-proBNP in heart
failure, blood gas in the sick).

Marker bits (see state.py) are shown as: bit 0 eosinophils %, bit 1 monocytes %,
bit 2 magnesium, bit 3 total calcium (each high vs normal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from preprocessing.lab_catalog import LAB_ITEMS, lab_by_itemid
from preprocessing.synth.state import AdmissionState, PatientTraits

PANELS: dict[str, tuple[int, ...]] = {
    "bmp": (50983, 50971, 50902, 50882, 51006, 50912, 50931, 50868),
    "indices": (50934, 51678, 50947),
    "mg_ca_phos": (50960, 50893, 50970),
    "lft": (50861, 50878, 50863, 50885, 50862),
    "cardiac": (51003, 50910, 50911),
    "bnp": (50963,),
    "crp": (50889,),
    "cbc": (51221, 51222, 51265, 51301, 51249, 51279, 51250, 51248, 51277, 52172),
    "diff": (51146, 51256, 51254, 51200, 51244, 52075, 52073, 52074, 52069, 51133, 52135),
    "coag": (51237, 51274, 51275),
    "gas": (50820, 50818, 50821, 50802, 50804, 50813),
    "lactate": (50813,),
}
# Panels measured on one specimen tube share a specimen_id in labevents.
SPECIMEN_OF_PANEL = {
    "bmp": "chem",
    "indices": "chem",
    "mg_ca_phos": "chem",
    "lft": "chem",
    "cardiac": "chem",
    "bnp": "chem",
    "crp": "chem",
    "cbc": "heme",
    "diff": "heme",
    "coag": "coag",
    "gas": "gas",
    "lactate": "gas",
}
MARKER_LABS = (51200, 51254, 50960, 50893)

_DECIMALS = {50912: 1, 51237: 1, 50820: 2, 51003: 2, 50813: 1, 50885: 1, 50862: 1, 50960: 1}
_DECIMALS |= {50970: 1, 50893: 1, 51146: 1, 51200: 1, 52135: 1, 50947: 0, 50934: 0, 51678: 0}


def value_decimals(itemid: int) -> int:
    """Decimal places MIMIC prints for this lab's value (e.g. Sodium 140, Potassium 4.1)."""
    if itemid in _DECIMALS:
        return _DECIMALS[itemid]
    item = lab_by_itemid(itemid)
    if item.normal_high >= 100:
        return 0
    if item.normal_high >= 0.5:
        return 1
    return 2


def lab_values(
    rng: np.random.Generator, patient: PatientTraits, state: AdmissionState
) -> dict[int, float]:
    """The admission's value of every catalogue lab (itemid -> value in the catalogue unit)."""
    n = rng.normal
    ln = rng.lognormal
    renal = min(1.0, max(0.0, (state.creatinine - 1.0) / 4.0))
    l0, l1, l2, l3 = state.lab_bits
    v: dict[int, float] = {}
    # Blood count
    hb = state.hemoglobin
    mcv = n(84.0 if state.bleeding else 90.0, 4.0)
    v[51222] = hb
    v[51221] = hb * 3.0 + n(0, 0.8)
    v[51250] = mcv
    v[51279] = v[51221] / mcv * 10.0
    v[51248] = mcv * 0.33 + n(0, 0.6)
    v[51249] = v[51248] / mcv * 100.0
    v[51277] = n(13.4 + 1.5 * (state.bleeding or patient.chronic_kidney_disease), 0.8)
    v[52172] = v[51277] * mcv / 100 * 3.4 + n(0, 1.5)
    v[51265] = ln(np.log(250.0 if not state.pneumonia else 210.0), 0.3)
    wbc = state.wbc
    v[51301] = wbc
    eos = ln(np.log(5.5 if l0 else 0.9), 0.2)
    mono = n(11.5 if l1 else 5.5, 1.1)
    baso = ln(np.log(0.4), 0.3)
    ig = ln(np.log(1.2 if state.pneumonia else 0.4), 0.3)
    neut = n(78.0 if state.pneumonia else 62.0, 6.0)
    lymph = max(2.0, 100.0 - neut - mono - eos - baso - ig)
    for itemid, pct in ((51200, eos), (51254, mono), (51146, baso), (52135, ig)):
        v[itemid] = pct
    v[51256], v[51244] = neut, lymph
    for itemid, pct in ((52073, eos), (52074, mono), (52069, baso), (52075, neut), (51133, lymph)):
        v[itemid] = wbc * pct / 100.0
    # Chemistry
    na = n(139.0 - 3.0 * state.hf_exacerbation, 3.0)
    cl = n(103.0, 3.0)
    hco3 = n(25.0 - 1.5 * max(0.0, state.lactate - 1.5) - 3.0 * renal, 2.0)
    v[50983], v[50902], v[50882] = na, cl, hco3
    v[50971] = state.potassium
    v[50912] = state.creatinine
    v[51006] = 14.0 * state.creatinine**0.8 * (1.3 if state.hf_exacerbation else 1.0) * ln(0, 0.15)
    v[50931] = ln(np.log(115.0), 0.25)
    v[50868] = na - cl - hco3 + n(0, 1.0)
    v[50960] = n(2.45 if l2 else 1.85, 0.1)
    v[50893] = n((9.9 if l3 else 8.7) - 0.3 * patient.chronic_kidney_disease, 0.22)
    v[50970] = n(3.5 + 2.0 * renal, 0.5)
    v[50861] = ln(np.log(24.0), 0.5)
    v[50878] = ln(np.log(27.0 * (3.0 if state.myocardial_infarction else 1.0)), 0.5)
    v[50863] = ln(np.log(82.0), 0.3)
    v[50885] = ln(np.log(0.6), 0.45)
    v[50862] = n(3.9 - 0.8 * state.sickness, 0.35)
    v[50934] = ln(np.log(12.0), 0.9)
    v[51678] = ln(np.log(10.0), 0.7)
    v[50947] = v[50885] * 1.2 + ln(np.log(0.5), 0.5)
    # Cardiac and inflammatory markers
    trop = 0.01 + 0.04 * patient.chronic_kidney_disease
    v[51003] = ln(np.log(1.2), 0.8) if state.myocardial_infarction else trop * ln(0, 0.4)
    v[50910] = ln(np.log(900.0 if state.myocardial_infarction else 120.0), 0.5)
    v[50911] = ln(np.log(45.0 if state.myocardial_infarction else 3.0), 0.5)
    bnp = 12000.0 if state.hf_exacerbation else (2500.0 if patient.heart_failure else 150.0)
    v[50963] = ln(np.log(bnp * (2.0 if patient.chronic_kidney_disease else 1.0)), 0.5)
    v[50889] = ln(np.log(120.0 if state.pneumonia else 3.0), 0.6)
    # Blood gas
    v[50813] = state.lactate
    v[50820] = n(7.40 - 0.03 * (state.lactate - 1.2) - 0.05 * renal, 0.03)
    v[50818] = n(40.0, 5.0)
    v[50821] = ln(np.log(70.0 if (state.pneumonia or state.hf_exacerbation) else 92.0), 0.25)
    v[50802] = hco3 - 24.0 + n(0, 1.0)
    v[50804] = hco3 + 1.0 + n(0, 0.5)
    inr = ln(np.log(2.4), 0.25) if patient.chronic_af else ln(np.log(1.1), 0.08)
    v[51237] = inr
    v[51274] = 11.0 * inr + n(0, 0.4)
    v[51275] = n(30.0, 4.0)
    for item in LAB_ITEMS:
        v[item.itemid] = float(np.clip(v[item.itemid], item.plausible_low, item.plausible_high))
    return v


@dataclass(frozen=True)
class LabDraw:
    """One blood draw: when (hours after admittime) and which panels were ordered."""

    hours: float
    panels: tuple[str, ...]
    priority: str


def _initial_panels(
    rng: np.random.Generator, patient: PatientTraits, state: AdmissionState
) -> list[str]:
    """Panels ordered at admission; some always, some only when a condition is suspected."""
    r = rng.random
    chance = {
        "bmp": 0.96,
        "cbc": 0.94,
        "mg_ca_phos": 0.8,
        "coag": 0.45 + 0.35 * patient.chronic_af,
        "lft": 0.4 + 0.3 * state.pneumonia,
        "cardiac": 0.95 if state.myocardial_infarction else 0.2 + 0.3 * state.hf_exacerbation,
        "bnp": 0.85 if state.hf_exacerbation else 0.1,
        "crp": 0.1 + 0.4 * state.pneumonia,
        "gas": 0.8 if (state.pneumonia or state.sickness > 0.55) else 0.12,
    }
    panels = [name for name, p in chance.items() if r() < p]
    if "bmp" in panels and r() < 0.55:
        panels.append("indices")
    if "cbc" in panels and r() < 0.8:
        panels.append("diff")
    if "gas" not in panels and r() < (0.6 if state.pneumonia else 0.2):
        panels.append("lactate")
    return panels


def lab_draws(
    rng: np.random.Generator, patient: PatientTraits, state: AdmissionState, timing: str
) -> list[LabDraw]:
    """Blood draws of one admission. timing: 'window' (first draw within 24 h), 'late', 'none'."""
    if timing == "none":
        return []
    panels = tuple(_initial_panels(rng, patient, state))
    if not panels:
        panels = ("bmp", "cbc")
    first = rng.uniform(-6.0, 4.0) if timing == "window" else rng.uniform(26.0, 60.0)
    priority = "STAT" if state.sickness > 0.4 else "ROUTINE"
    draws = [LabDraw(first, panels, priority)]
    if timing == "window" and rng.random() < 0.4:
        draws.append(LabDraw(first + rng.uniform(8.0, 18.0), ("bmp", "cbc"), "ROUTINE"))
    if rng.random() < 0.5:
        draws.append(LabDraw(rng.uniform(30.0, 70.0) + max(first, 0), ("bmp", "cbc"), "ROUTINE"))
    return draws


def format_value(itemid: int, value: float) -> str:
    """The value text MIMIC would show for a numeric result."""
    return f"{value:.{value_decimals(itemid)}f}"
