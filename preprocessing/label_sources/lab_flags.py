"""labevents values against their reference ranges -> high/low lab findings.

For each admission and lab the row chosen is the cohort's (the earliest numeric value in
the lab window, preprocessing/cohort.py). Its direction comes, in this order, from
``valuenum`` against the row's ``ref_range_lower`` / ``ref_range_upper`` (each hospital's
range, as the analyser printed it); from ``flag`` ("abnormal" or empty: it does not say
high or low, so the direction is the side of the catalogue range's midpoint the value is
on); from the lab catalogue's typical range (preprocessing/lab_catalog.py). A lab with none
of these is unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.cohort import earliest_in_window
from preprocessing.errors import InvalidTable
from preprocessing.lab_catalog import LAB_ITEMS
from preprocessing.label_sources.source_files import read_source

LAB_SOURCE_COLUMNS = (
    "labevent_id",
    "subject_id",
    "itemid",
    "charttime",
    "valuenum",
    "ref_range_lower",
    "ref_range_upper",
    "flag",
)
CHUNK_ROWS = 1 << 20
_CATALOGUE = {item.itemid: (item.normal_low, item.normal_high) for item in LAB_ITEMS}


def read_lab_rows(path: Path, itemids: Iterable[int], subject_ids: Iterable[int]) -> pd.DataFrame:
    """Numeric labevents rows of `itemids` for `subject_ids`, with ranges and flag (chunked)."""
    items, subjects = {int(i) for i in itemids}, {int(s) for s in subject_ids}
    kept = []
    chunks = read_source(
        path,
        LAB_SOURCE_COLUMNS,
        usecols=list(LAB_SOURCE_COLUMNS),
        dtype={"flag": str, "charttime": str},
        chunksize=CHUNK_ROWS,
    )
    try:
        for chunk in chunks:
            for column in ("subject_id", "itemid", "labevent_id"):
                chunk[column] = pd.to_numeric(chunk[column], errors="coerce")
            chunk = chunk[chunk["itemid"].isin(items) & chunk["subject_id"].isin(subjects)]
            for column in ("valuenum", "ref_range_lower", "ref_range_upper"):
                chunk[column] = pd.to_numeric(chunk[column], errors="coerce")
            chunk["charttime"] = pd.to_datetime(chunk["charttime"], errors="coerce")
            kept.append(chunk[chunk["valuenum"].notna() & chunk["charttime"].notna()])
    except (OSError, ValueError, EOFError) as error:
        raise InvalidTable(path, f"cannot be read ({type(error).__name__}: {error})") from None
    rows = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=LAB_SOURCE_COLUMNS)
    for column in ("subject_id", "itemid", "labevent_id"):
        rows[column] = rows[column].astype("int64")
    return rows


def lab_direction(
    itemid: int, value: np.ndarray, lower: np.ndarray, upper: np.ndarray, flag: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) float arrays of one lab's chosen values: 1, 0 or NaN (unknown)."""
    value = np.asarray(value, dtype=float)
    high, low = np.full(len(value), np.nan), np.full(len(value), np.nan)
    has_value = ~np.isnan(value)
    ranged = has_value & ~(np.isnan(lower) & np.isnan(upper))
    high[ranged] = np.where(np.isnan(upper[ranged]), 0.0, value[ranged] > upper[ranged])
    low[ranged] = np.where(np.isnan(lower[ranged]), 0.0, value[ranged] < lower[ranged])
    catalogue = _CATALOGUE.get(int(itemid))
    flagged = np.array([str(f).strip().lower() == "abnormal" for f in flag], dtype=bool)
    by_flag = has_value & ~ranged & flagged & (catalogue is not None)
    if catalogue is not None:
        mid = (catalogue[0] + catalogue[1]) / 2
        high[by_flag] = value[by_flag] > mid
        low[by_flag] = value[by_flag] <= mid
        rest = has_value & ~ranged & ~by_flag
        high[rest] = value[rest] > catalogue[1]
        low[rest] = value[rest] < catalogue[0]
    return high, low


def lab_finding_labels(
    admissions: pd.DataFrame,
    rows: pd.DataFrame,
    labs: Sequence[tuple[int, str]],
    window_h: tuple[float, float],
) -> pd.DataFrame:
    """`labs:high_<name>` and `labs:low_<name>` per admission (subject_id, admittime).

    labs: (itemid, finding name) pairs; the value is the cohort's (earliest in the window).
    """
    columns: dict[str, np.ndarray] = {}
    ordered = rows.sort_values(["itemid", "charttime", "labevent_id"], kind="stable")
    groups = dict(iter(ordered.groupby("itemid", sort=False)))
    for itemid, name in labs:
        high = low = np.full(len(admissions), np.nan)
        lab_rows = groups.get(int(itemid))
        if lab_rows is not None:
            events = lab_rows[
                [
                    "subject_id",
                    "charttime",
                    "valuenum",
                    "ref_range_lower",
                    "ref_range_upper",
                    "flag",
                ]
            ]
            found = earliest_in_window(admissions, events, "charttime", window_h)
            high, low = lab_direction(
                itemid,
                found["valuenum"].to_numpy(dtype=float),
                found["ref_range_lower"].to_numpy(dtype=float),
                found["ref_range_upper"].to_numpy(dtype=float),
                found["flag"].fillna("").to_numpy(dtype=object),
            )
        columns[f"labs:high_{name}"] = high
        columns[f"labs:low_{name}"] = low
    return pd.DataFrame(columns, index=admissions.index)
