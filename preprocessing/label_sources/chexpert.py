"""MIMIC-CXR-JPG's CheXpert and NegBio labels -> the 14 CXR findings, with an uncertainty policy.

``mimic-cxr-2.0.0-chexpert.csv.gz`` and ``mimic-cxr-2.0.0-negbio.csv.gz``: one row per
study (subject_id, study_id) and one column per observation, 1.0 positive, 0.0 negative,
-1.0 uncertain, blank not mentioned. Blank is taken as negative (not mentioned in the
report), as Irvin et al. (AAAI 2019) train on it; uncertain follows the policy: ``ignore``
(unknown, left out of the loss; the default), ``ones`` or ``zeros``. A study without a row
is unknown. "Lung Lesion" has no location: located findings come from the reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.label_sources.source_files import finding_name, read_source
from preprocessing.layout import CHEXPERT_COLUMNS, CHEXPERT_FILE, CHEXPERT_OBSERVATIONS, NEGBIO_FILE

LABELER_FILES = {"chexpert": CHEXPERT_FILE, "negbio": NEGBIO_FILE}
UNCERTAINTY_POLICIES = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}


def read_chexpert(path: Path, study_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """A CheXpert/NegBio table: study_id and the 14 observations as float (NaN = blank)."""
    frame = read_source(path, CHEXPERT_COLUMNS)
    frame["study_id"] = pd.to_numeric(frame["study_id"], errors="coerce")
    frame = frame[frame["study_id"].notna()].astype({"study_id": "int64"})
    if study_ids is not None:
        frame = frame[frame["study_id"].isin({int(s) for s in study_ids})]
    for column in CHEXPERT_OBSERVATIONS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.drop_duplicates("study_id", keep="first").reset_index(drop=True)


def apply_uncertainty(values: np.ndarray, policy: str) -> np.ndarray:
    """1.0/0.0/-1.0/NaN(blank) -> 1/0/NaN: blank is 0, -1.0 follows the policy."""
    out = np.where(np.isnan(values), 0.0, values)
    return np.where(out == -1.0, UNCERTAINTY_POLICIES[policy], out)


def chexpert_finding_labels(table: pd.DataFrame, study_ids: pd.Series, policy: str) -> pd.DataFrame:
    """`cxr:<observation>` columns aligned to `study_ids`; NaN where the study has no row."""
    indexed = table.set_index("study_id")[list(CHEXPERT_OBSERVATIONS)]
    present = study_ids.isin(indexed.index).to_numpy()
    values = np.full((len(study_ids), len(CHEXPERT_OBSERVATIONS)), np.nan)
    if present.any():
        rows = indexed.loc[study_ids[present].astype("int64")].to_numpy(dtype=float)
        values[present] = apply_uncertainty(rows, policy)
    columns = [f"cxr:{finding_name(o)}" for o in CHEXPERT_OBSERVATIONS]
    return pd.DataFrame(values, columns=columns, index=study_ids.index)
