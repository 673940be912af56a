"""The lab catalogue: the paper's 50 labs, MIMIC-IV identities, coherent ranges."""

from __future__ import annotations

import pytest

from preprocessing.lab_catalog import LAB_ITEMS, PAPER_LAB_ITEMIDS, LabItem, lab_by_itemid


def test_paper_list_has_50_distinct_catalogued_itemids() -> None:
    assert len(PAPER_LAB_ITEMIDS) == 50
    assert len(set(PAPER_LAB_ITEMIDS)) == 50
    catalogued = {item.itemid for item in LAB_ITEMS}
    assert set(PAPER_LAB_ITEMIDS) <= catalogued
    assert len(catalogued) == len(LAB_ITEMS), "duplicate itemid in LAB_ITEMS"


def test_specimen_quality_indices_are_the_h_l_i_items() -> None:
    flagged = {item.itemid: item.label for item in LAB_ITEMS if item.specimen_quality}
    assert flagged == {50934: "H", 51678: "L", 50947: "I"}
    assert set(flagged) <= set(PAPER_LAB_ITEMIDS)


@pytest.mark.parametrize(
    ("itemid", "label", "unit", "category"),
    [
        (50912, "Creatinine", "mg/dL", "Chemistry"),
        (51006, "Urea Nitrogen", "mg/dL", "Chemistry"),
        (50983, "Sodium", "mEq/L", "Chemistry"),
        (50971, "Potassium", "mEq/L", "Chemistry"),
        (51222, "Hemoglobin", "g/dL", "Hematology"),
        (51265, "Platelet Count", "K/uL", "Hematology"),
        (50813, "Lactate", "mmol/L", "Blood Gas"),
        (51003, "Troponin T", "ng/mL", "Chemistry"),
    ],
)
def test_known_items_carry_mimic_identity(itemid, label, unit, category) -> None:
    item = lab_by_itemid(itemid)
    assert isinstance(item, LabItem)
    assert (item.label, item.unit, item.category, item.fluid) == (label, unit, category, "Blood")


def test_ranges_are_ordered_and_unknown_itemid_is_named() -> None:
    for item in LAB_ITEMS:
        assert item.plausible_low <= item.normal_low < item.normal_high <= item.plausible_high
    with pytest.raises(KeyError, match="12345"):
        lab_by_itemid(12345)
