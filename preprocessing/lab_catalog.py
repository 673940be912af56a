"""The blood labs the project knows: MIMIC-IV itemids, labels, fluids, categories and units.

One entry per lab as MIMIC-IV's ``d_labitems`` names it (labels are copied as the release
spells them, e.g. ``Asparate Aminotransferase (AST)``), with the unit ``labevents.valueuom``
carries, a typical reference range (what ``ref_range_lower/upper`` usually hold) and a
plausible range (values outside it are physiologically impossible or a unit error).

``PAPER_LAB_ITEMIDS`` is the exact list of 50 labs of the Symile paper's Symile-MIMIC
dataset, in the order the reference code lists them (``LABS`` in ``experiments/constants.py``
of github.com/rajesh-lab/symile, "top labs in MIMIC-IV"). Three of them, ``H``, ``L`` and
``I`` (50934, 51678, 50947), are not analytes but specimen-quality indices (haemolysis,
lipaemia, icterus) that the analyser reports with a chemistry panel; they are flagged
``specimen_quality=True``. ``LAB_ITEMS`` adds a few cardiac and inflammatory markers
(troponin T, CK-MB, NT-proBNP, CRP) that the synthetic cohort also writes.

Reference and plausible ranges are typical adult values for the units given; they serve the
synthetic generator, not clinical decisions. The filter of real data is `impossible_bounds`:
far wider, so that real extremes (rhabdomyolysis, diabetic coma) are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class LabItem:
    """One lab test: MIMIC-IV identity plus its unit, reference and plausible ranges."""

    itemid: int
    label: str
    fluid: str
    category: str
    unit: str
    normal_low: float
    normal_high: float
    plausible_low: float
    plausible_high: float
    specimen_quality: bool = False


_BLOOD = "Blood"
_CHEM = "Chemistry"
_HEME = "Hematology"
_GAS = "Blood Gas"


def _lab(
    itemid: int,
    label: str,
    category: str,
    unit: str,
    normal: tuple[float, float],
    plausible: tuple[float, float],
    specimen_quality: bool = False,
) -> LabItem:
    return LabItem(
        itemid=itemid,
        label=label,
        fluid=_BLOOD,
        category=category,
        unit=unit,
        normal_low=normal[0],
        normal_high=normal[1],
        plausible_low=plausible[0],
        plausible_high=plausible[1],
        specimen_quality=specimen_quality,
    )


LAB_ITEMS: tuple[LabItem, ...] = (
    # --- the paper's 50, in the reference code's order ---
    _lab(51221, "Hematocrit", _HEME, "%", (36.0, 48.0), (5.0, 75.0)),
    _lab(51265, "Platelet Count", _HEME, "K/uL", (150.0, 440.0), (1.0, 2000.0)),
    _lab(50912, "Creatinine", _CHEM, "mg/dL", (0.5, 1.2), (0.1, 25.0)),
    _lab(50971, "Potassium", _CHEM, "mEq/L", (3.3, 5.1), (1.5, 9.5)),
    _lab(51222, "Hemoglobin", _HEME, "g/dL", (12.0, 16.0), (2.0, 25.0)),
    _lab(51301, "White Blood Cells", _HEME, "K/uL", (4.0, 11.0), (0.1, 300.0)),
    _lab(51249, "MCHC", _HEME, "g/dL", (31.0, 37.0), (24.0, 42.0)),
    _lab(51279, "Red Blood Cells", _HEME, "m/uL", (4.2, 5.4), (0.8, 9.0)),
    _lab(51250, "MCV", _HEME, "fL", (82.0, 98.0), (50.0, 140.0)),
    _lab(51248, "MCH", _HEME, "pg", (27.0, 32.0), (15.0, 45.0)),
    _lab(51277, "RDW", _HEME, "%", (10.5, 15.5), (9.0, 35.0)),
    _lab(51006, "Urea Nitrogen", _CHEM, "mg/dL", (6.0, 20.0), (1.0, 250.0)),
    _lab(50983, "Sodium", _CHEM, "mEq/L", (133.0, 145.0), (100.0, 185.0)),
    _lab(50902, "Chloride", _CHEM, "mEq/L", (96.0, 108.0), (60.0, 140.0)),
    _lab(50882, "Bicarbonate", _CHEM, "mEq/L", (22.0, 32.0), (3.0, 55.0)),
    _lab(50868, "Anion Gap", _CHEM, "mEq/L", (8.0, 20.0), (0.0, 50.0)),
    _lab(50931, "Glucose", _CHEM, "mg/dL", (70.0, 100.0), (10.0, 1500.0)),
    _lab(50960, "Magnesium", _CHEM, "mg/dL", (1.6, 2.6), (0.3, 9.0)),
    _lab(50893, "Calcium, Total", _CHEM, "mg/dL", (8.4, 10.3), (3.0, 18.0)),
    _lab(50970, "Phosphate", _CHEM, "mg/dL", (2.7, 4.5), (0.3, 20.0)),
    _lab(51237, "INR(PT)", _HEME, "", (0.9, 1.1), (0.5, 20.0)),
    _lab(51274, "PT", _HEME, "sec", (9.4, 12.5), (7.0, 150.0)),
    _lab(51275, "PTT", _HEME, "sec", (25.0, 36.5), (15.0, 150.0)),
    _lab(51146, "Basophils", _HEME, "%", (0.0, 1.0), (0.0, 15.0)),
    _lab(51256, "Neutrophils", _HEME, "%", (50.0, 70.0), (0.0, 100.0)),
    _lab(51254, "Monocytes", _HEME, "%", (2.0, 11.0), (0.0, 60.0)),
    _lab(51200, "Eosinophils", _HEME, "%", (1.0, 4.0), (0.0, 50.0)),
    _lab(51244, "Lymphocytes", _HEME, "%", (18.0, 42.0), (0.0, 100.0)),
    _lab(52172, "RDW-SD", _HEME, "fL", (35.1, 46.3), (25.0, 120.0)),
    _lab(50934, "H", _CHEM, "", (0.0, 30.0), (0.0, 2000.0), specimen_quality=True),
    _lab(51678, "L", _CHEM, "", (0.0, 30.0), (0.0, 2000.0), specimen_quality=True),
    _lab(50947, "I", _CHEM, "", (0.0, 5.0), (0.0, 100.0), specimen_quality=True),
    _lab(50861, "Alanine Aminotransferase (ALT)", _CHEM, "IU/L", (0.0, 40.0), (0.0, 10000.0)),
    _lab(50878, "Asparate Aminotransferase (AST)", _CHEM, "IU/L", (0.0, 40.0), (0.0, 20000.0)),
    _lab(50813, "Lactate", _GAS, "mmol/L", (0.5, 2.0), (0.2, 30.0)),
    _lab(50863, "Alkaline Phosphatase", _CHEM, "IU/L", (35.0, 105.0), (5.0, 3000.0)),
    _lab(50885, "Bilirubin, Total", _CHEM, "mg/dL", (0.0, 1.5), (0.0, 60.0)),
    _lab(50820, "pH", _GAS, "units", (7.35, 7.45), (6.5, 7.9)),
    _lab(50862, "Albumin", _CHEM, "g/dL", (3.5, 5.2), (0.8, 6.5)),
    _lab(50802, "Base Excess", _GAS, "mEq/L", (-2.0, 3.0), (-35.0, 35.0)),
    _lab(50821, "pO2", _GAS, "mm Hg", (85.0, 105.0), (10.0, 650.0)),
    _lab(50804, "Calculated Total CO2", _GAS, "mEq/L", (21.0, 30.0), (3.0, 60.0)),
    _lab(50818, "pCO2", _GAS, "mm Hg", (35.0, 45.0), (10.0, 150.0)),
    _lab(52075, "Absolute Neutrophil Count", _HEME, "K/uL", (1.6, 6.1), (0.0, 250.0)),
    _lab(52073, "Absolute Eosinophil Count", _HEME, "K/uL", (0.04, 0.44), (0.0, 20.0)),
    _lab(52074, "Absolute Monocyte Count", _HEME, "K/uL", (0.2, 0.95), (0.0, 50.0)),
    _lab(52069, "Absolute Basophil Count", _HEME, "K/uL", (0.01, 0.08), (0.0, 10.0)),
    _lab(51133, "Absolute Lymphocyte Count", _HEME, "K/uL", (1.2, 3.7), (0.0, 250.0)),
    _lab(50910, "Creatine Kinase (CK)", _CHEM, "IU/L", (40.0, 300.0), (5.0, 100000.0)),
    _lab(52135, "Immature Granulocytes", _HEME, "%", (0.0, 0.7), (0.0, 30.0)),
    # --- cardiac and inflammatory markers beyond the paper's list ---
    _lab(51003, "Troponin T", _CHEM, "ng/mL", (0.0, 0.01), (0.0, 25.0)),
    _lab(50911, "Creatine Kinase, MB Isoenzyme", _CHEM, "ng/mL", (0.0, 10.0), (0.0, 500.0)),
    _lab(50963, "NTproBNP", _CHEM, "pg/mL", (0.0, 450.0), (0.0, 70000.0)),
    _lab(50889, "C-Reactive Protein", _CHEM, "mg/L", (0.0, 5.0), (0.0, 500.0)),
)

PAPER_LAB_ITEMIDS: tuple[int, ...] = tuple(item.itemid for item in LAB_ITEMS[:50])

_BY_ITEMID: dict[int, LabItem] = {item.itemid: item for item in LAB_ITEMS}


def lab_by_itemid(itemid: int) -> LabItem:
    """The catalogue entry for a MIMIC-IV lab itemid; KeyError naming it if unknown."""
    try:
        return _BY_ITEMID[int(itemid)]
    except KeyError:
        raise KeyError(f"lab itemid {itemid} is not in preprocessing.lab_catalog") from None


def plausible_range(itemid: int) -> tuple[float, float] | None:
    """(low, high) the synthetic generator draws this lab's values within; None if unknown.

    A generator's range, not a filter: real extremes lie outside it (CK over 100,000 IU/L
    in rhabdomyolysis). What preprocess and the app refuse is `impossible_bounds`.
    """
    item = _BY_ITEMID.get(int(itemid))
    return None if item is None else (item.plausible_low, item.plausible_high)


# The filter's bounds: values no human sample can have, in the catalogue's unit. Low is 0
# for every analyte that cannot be negative (only base excess and the anion gap can); high
# is well above the most extreme values reported in patients (e.g. CK about 2 M IU/L,
# glucose about 2,700 mg/dL, sodium about 255 mEq/L), or the quantity's own ceiling
# (100 % of a count, pH 14). A value outside them is a unit, entry or parsing error.
_IMPOSSIBLE: dict[int, tuple[float, float]] = {
    51221: (0.0, 100.0),  # Hematocrit %
    51265: (0.0, 20_000.0),  # Platelet Count K/uL
    50912: (0.0, 150.0),  # Creatinine mg/dL
    50971: (0.0, 50.0),  # Potassium mEq/L
    51222: (0.0, 50.0),  # Hemoglobin g/dL
    51301: (0.0, 2_000.0),  # White Blood Cells K/uL
    51249: (0.0, 100.0),  # MCHC g/dL
    51279: (0.0, 30.0),  # Red Blood Cells m/uL
    51250: (0.0, 300.0),  # MCV fL
    51248: (0.0, 150.0),  # MCH pg
    51277: (0.0, 100.0),  # RDW %
    51006: (0.0, 1_000.0),  # Urea Nitrogen mg/dL
    50983: (0.0, 300.0),  # Sodium mEq/L
    50902: (0.0, 300.0),  # Chloride mEq/L
    50882: (0.0, 200.0),  # Bicarbonate mEq/L
    50868: (-100.0, 200.0),  # Anion Gap mEq/L (negative with paraproteins, lithium)
    50931: (0.0, 10_000.0),  # Glucose mg/dL
    50960: (0.0, 50.0),  # Magnesium mg/dL
    50893: (0.0, 50.0),  # Calcium, Total mg/dL
    50970: (0.0, 100.0),  # Phosphate mg/dL
    51237: (0.0, 200.0),  # INR(PT)
    51274: (0.0, 1_000.0),  # PT sec
    51275: (0.0, 1_000.0),  # PTT sec
    51146: (0.0, 100.0),  # Basophils %
    51256: (0.0, 100.0),  # Neutrophils %
    51254: (0.0, 100.0),  # Monocytes %
    51200: (0.0, 100.0),  # Eosinophils %
    51244: (0.0, 100.0),  # Lymphocytes %
    52172: (0.0, 500.0),  # RDW-SD fL
    50934: (0.0, 100_000.0),  # H (haemolysis index)
    51678: (0.0, 100_000.0),  # L (lipaemia index)
    50947: (0.0, 100_000.0),  # I (icterus index)
    50861: (0.0, 500_000.0),  # ALT IU/L
    50878: (0.0, 500_000.0),  # AST IU/L
    50813: (0.0, 100.0),  # Lactate mmol/L
    50863: (0.0, 100_000.0),  # Alkaline Phosphatase IU/L
    50885: (0.0, 200.0),  # Bilirubin, Total mg/dL
    50820: (0.0, 14.0),  # pH
    50862: (0.0, 20.0),  # Albumin g/dL
    50802: (-100.0, 100.0),  # Base Excess mEq/L
    50821: (0.0, 3_000.0),  # pO2 mm Hg (hyperbaric oxygen reaches about 2,000)
    50804: (0.0, 200.0),  # Calculated Total CO2 mEq/L
    50818: (0.0, 500.0),  # pCO2 mm Hg
    52075: (0.0, 2_000.0),  # Absolute Neutrophil Count K/uL
    52073: (0.0, 1_000.0),  # Absolute Eosinophil Count K/uL
    52074: (0.0, 1_000.0),  # Absolute Monocyte Count K/uL
    52069: (0.0, 1_000.0),  # Absolute Basophil Count K/uL
    51133: (0.0, 2_000.0),  # Absolute Lymphocyte Count K/uL
    50910: (0.0, 10_000_000.0),  # Creatine Kinase (CK) IU/L
    52135: (0.0, 100.0),  # Immature Granulocytes %
    51003: (0.0, 1_000.0),  # Troponin T ng/mL
    50911: (0.0, 10_000.0),  # CK-MB ng/mL
    50963: (0.0, 1_000_000.0),  # NTproBNP pg/mL
    50889: (0.0, 2_000.0),  # C-Reactive Protein mg/L
}


def impossible_bounds(itemid: int) -> tuple[float, float] | None:
    """(low, high) outside which a value of this lab is impossible; None if not catalogued.

    The one lab-value filter: preprocess quarantines a labevents row outside it (and any
    non-finite value) and the app refuses an upload outside it.
    """
    return _IMPOSSIBLE.get(int(itemid))


def impossible_bounds_of(itemids: Sequence[int]) -> dict[int, tuple[float, float]]:
    """impossible_bounds of each catalogued itemid among `itemids`."""
    return {int(i): b for i in itemids if (b := impossible_bounds(i)) is not None}


def is_possible_value(itemid: int, value: float) -> bool:
    """Whether `value` is finite and inside the lab's impossible_bounds (if it has any)."""
    if not math.isfinite(value):
        return False
    bounds = impossible_bounds(itemid)
    return bounds is None or bounds[0] <= value <= bounds[1]


def lab_descriptions(itemids: Sequence[int], d_labitems: pd.DataFrame) -> dict[int, dict]:
    """Label, fluid and unit per itemid: the catalogue first, d_labitems for the rest."""
    table = d_labitems.set_index("itemid") if not d_labitems.empty else None
    out = {}
    for itemid in itemids:
        try:
            item = lab_by_itemid(itemid)
            out[int(itemid)] = {"label": item.label, "fluid": item.fluid, "unit": item.unit}
        except KeyError:
            if table is not None and itemid in table.index:
                row = table.loc[itemid]
                out[int(itemid)] = {"label": str(row["label"]), "fluid": str(row["fluid"])}
    return out
