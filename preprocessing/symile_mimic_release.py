"""The published Symile-MIMIC release (PhysioNet, credentialed): its layout, its import into a
dataset directory (how a locally built cohort agrees with it: preprocessing/compare_cohort.py).

The release, as the reference code writes and reads it (github.com/rajesh-lab/symile,
experiments/data_processing/symile_mimic/ and experiments/datasets.py):

```
RELEASE/
  symile_mimic_data.csv      the whole cohort, one row per admission (ids, paths, times, labs)
  train.csv val.csv          one row per admission of the split
  val_retrieval.csv test.csv every admission as a query (label 1, label_hadm_id = hadm_id),
                             then K-1 other admissions of the split per query (label 0,
                             label_hadm_id = the query's)
  labs_means.json            {"<itemid>_percentile": train mean percentile}: the fill value
  data_npy/<split>/          per split (train, val, val_retrieval, test), .npy (or .pt):
    cxr_<split>              float32 [n, 3, 320, 320] grey replicated, ImageNet-normalised
    ecg_<split>              float32 [n, 1, 5000, 12] min-max to [-1, 1] over the record,
                             leads in MIMIC-IV-ECG's order (I II III aVR aVF aVL V1-V6)
    labs_percentiles_<split> float32 [n, L] train ECDF percentiles, missing = labs_means
    labs_missingness_<split> int64 [n, L] 1 = OBSERVED (despite the name), 0 = missing
    hadm_id_<split>          int64 [n], row i of the tensors is row i of <split>.csv
    label_<split>, label_hadm_id_<split>   int64 [n] (val_retrieval and test only)
  symile_mimic_model.ckpt    the authors' Lightning checkpoint (read by the app's importer)
```

Lab columns are in `sorted(labs_means)` order, i.e. ascending itemid. The import writes our
dataset directory through `DatasetDir`: train and val as released, test as its query rows
(each candidate row of test.csv repeats one test admission's tensors), candidates exactly
as released (the true CXR first, then the negatives in file order), CXRs back to uint8 grey
(lossless: the released pixels are ImageNet-normalised k/255) and ECGs in the canonical lead
order as float16. The CXRs are streamed in chunks, so memory stays bounded whatever the
release's size, and a killed import resumes from its last committed chunk.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from preprocessing import layout
from preprocessing.errors import PreprocessError
from preprocessing.lab_catalog import lab_by_itemid
from preprocessing.labs import percentiles_from_cdf
from preprocessing.quarantine import QUARANTINE_COLUMNS, write_quarantine
from symile_clinical.formats.atomic import (
    atomic_path,
    remove_stale_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from symile_clinical.formats.dataset_dir import DatasetDir

log = logging.getLogger(__name__)

RELEASE_SPLITS = ("train", "val", "val_retrieval", "test")
RETRIEVAL_SPLITS = ("val_retrieval", "test")
COHORT_CSV = "symile_mimic_data.csv"
LABS_MEANS = "labs_means.json"
TENSOR_DIR = "data_npy"
CHECKPOINT = "symile_mimic_model.ckpt"
TENSOR_NAMES = ("cxr", "ecg", "labs_percentiles", "labs_missingness", "hadm_id")
RETRIEVAL_TENSOR_NAMES = ("label_hadm_id", "label")
TENSOR_SUFFIXES = (".npy", ".pt")

# The release's CXR normalisation (reference experiments/constants.py) and sizes.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CXR_SIZE = 320
ECG_SAMPLES = layout.ECG_SAMPLES
RELEASE_ECG_LEADS = layout.MIMIC_ECG_LEADS
# Column j of our canonical ECG is column CANONICAL_FROM_RELEASE[j] of the release's.
CANONICAL_FROM_RELEASE = tuple(RELEASE_ECG_LEADS.index(n) for n in layout.CANONICAL_ECG_LEADS)

# Our split <- (release split of its tensors, release split of its candidate sets).
SPLIT_SOURCES = {
    "train": ("train", None),
    "val": ("val", "val_retrieval"),
    "test": ("test", "test"),
}
SOURCE_SPLITS = tuple(source for source, _ in SPLIT_SOURCES.values())
# The columns the import reads from a CSV, checked when it is read (a missing one is a
# ReleaseError naming the file and the column): every CSV's ids; the MIMIC paths and the raw
# lab values (a column per labs_means.json itemid) of the CSVs whose admissions become our
# splits; the candidate sets of the retrieval CSVs.
ID_COLUMNS = ("subject_id", "hadm_id")
PATH_COLUMNS = ("ecg_path", "cxr_path")
CANDIDATE_COLUMNS = ("label", "label_hadm_id")
CHUNK_ROWS = 32  # CXR rows converted at a time: 32 x 3 x 320 x 320 float32 = 39 MB
GREY_TOLERANCE = 0.02  # in grey levels (1/255): how far a pixel may sit from k/255
CHECK_ROWS = 8  # candidate rows per split whose CXR and ECG are compared with their query's
# Labs of one admission, recomputed from the released CSV, agree to float32 rounding.
LAB_TOLERANCE = 1e-5
# The reference's percentile: the right-continuous empirical CDF of the training values,
# F(x) = #(train <= x) / n (statsmodels' StepFunction, side="right"); dataset.json says so
# per lab, and preprocessing.labs.percentiles_from_cdf applies it to uploads.
PERCENTILE_RULE = "ecdf_right"
# The reference cohort's windows (process_mimic_data.py), recorded in dataset.json.
COHORT_WINDOWS = {
    "ecg_window_h": [-24, 24],
    "lab_window_h": [-24, 24],
    "cxr_window_h": [24, 72],
    "cxr_views": ["AP", "PA"],
}


class ReleaseError(PreprocessError):
    """A release that does not follow the published layout: names the file and the reason."""


def require_columns(frame: pd.DataFrame, path: Path, columns: Iterable[str]) -> None:
    """ReleaseError naming the CSV `path` and every one of `columns` that `frame` lacks."""
    absent = [column for column in columns if column not in frame.columns]
    if absent:
        raise ReleaseError(path, f"no column {', '.join(absent)}")


def _path_id(path: str, pattern: str) -> str | None:
    match = re.search(pattern, str(path))
    return match.group(1) if match else None


def ids_from_paths(ecg_path: pd.Series, cxr_path: pd.Series) -> pd.DataFrame:
    """ecg_study_id (the record name), dicom_id (the image stem) and cxr_study_id (the s<id>
    folder) from the release's MIMIC paths."""
    ecg_study = ecg_path.astype(str).map(lambda p: _path_id(p, r"(\d+)(?:\.\w+)?$"))
    dicom = cxr_path.astype(str).map(lambda p: Path(p).stem)
    cxr_study = cxr_path.astype(str).map(lambda p: _path_id(p, r"/s(\d+)/[^/]+$"))
    return pd.DataFrame(
        {
            "ecg_study_id": pd.to_numeric(ecg_study, errors="coerce").fillna(-1).astype(np.int64),
            "dicom_id": dicom.astype(object),
            "cxr_study_id": pd.to_numeric(cxr_study, errors="coerce").fillna(-1).astype(np.int64),
        }
    )


class SymileMimicRelease:
    """A Symile-MIMIC release folder: the one place its file names and rules live."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise ReleaseError(self.root, "not a folder")

    # ------------------------------------------------------------------ file names
    def csv_path(self, split: str) -> Path:
        """RELEASE/<split>.csv."""
        return self.root / f"{split}.csv"

    @property
    def cohort_csv_path(self) -> Path:
        """RELEASE/symile_mimic_data.csv."""
        return self.root / COHORT_CSV

    @property
    def labs_means_path(self) -> Path:
        """RELEASE/labs_means.json."""
        return self.root / LABS_MEANS

    @property
    def checkpoint_path(self) -> Path:
        """RELEASE/symile_mimic_model.ckpt."""
        return self.root / CHECKPOINT

    def tensor_path(self, split: str, name: str) -> Path:
        """RELEASE/data_npy/<split>/<name>_<split>.npy, or its .pt; ReleaseError if neither."""
        folder = self.root / TENSOR_DIR / split
        candidates = [folder / f"{name}_{split}{suffix}" for suffix in TENSOR_SUFFIXES]
        for path in candidates:
            if path.is_file():
                return path
        raise ReleaseError(candidates[0], f"missing (nor {candidates[1].name})")

    def tensor_names(self, split: str) -> tuple[str, ...]:
        """The tensors a split has."""
        extra = RETRIEVAL_TENSOR_NAMES if split in RETRIEVAL_SPLITS else ()
        return TENSOR_NAMES + extra

    def missing_files(self) -> list[str]:
        """Every file of the layout that is not there (relative paths); [] when complete."""
        missing = []
        for path in [self.labs_means_path, *(self.csv_path(s) for s in RELEASE_SPLITS)]:
            if not path.is_file():
                missing.append(str(path.relative_to(self.root)))
        for split in RELEASE_SPLITS:
            for name in self.tensor_names(split):
                try:
                    self.tensor_path(split, name)
                except ReleaseError as error:
                    missing.append(str(Path(error.path).relative_to(self.root)))
        return missing

    def check_complete(self) -> None:
        """ReleaseError listing every missing file of the layout."""
        missing = self.missing_files()
        if missing:
            shown = ", ".join(missing[:12]) + (" ..." if len(missing) > 12 else "")
            raise ReleaseError(self.root, f"not a Symile-MIMIC release: missing {shown}")

    # ------------------------------------------------------------------ tables
    def required_columns(self, split: str) -> list[str]:
        """The columns the import reads from RELEASE/<split>.csv (see ID_COLUMNS)."""
        columns = list(ID_COLUMNS)
        if split in SOURCE_SPLITS:
            columns += [*PATH_COLUMNS, *(str(itemid) for itemid in self.itemids)]
        if split in RETRIEVAL_SPLITS:
            columns += CANDIDATE_COLUMNS
        return columns

    def read_csv(self, split: str) -> pd.DataFrame:
        """A split CSV; ReleaseError naming the file and the column when it lacks one of
        `required_columns(split)`."""
        return self._csv(self.csv_path(split), self.required_columns(split))

    def read_cohort_csv(self) -> pd.DataFrame | None:
        """symile_mimic_data.csv (its other columns are optional), or None when the release
        folder lacks it."""
        path = self.cohort_csv_path
        return self._csv(path, ID_COLUMNS) if path.is_file() else None

    @staticmethod
    def _csv(path: Path, columns: Iterable[str]) -> pd.DataFrame:
        try:
            frame = pd.read_csv(path, low_memory=False)
        except FileNotFoundError as error:
            raise ReleaseError(path, "missing") from error
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise ReleaseError(path, f"not a readable CSV ({error})") from error
        require_columns(frame, path, columns)
        return frame

    @cached_property
    def labs_means(self) -> dict[int, float]:
        """{itemid: fill percentile} in the release's column order (ascending itemid)."""
        path = self.labs_means_path
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise ReleaseError(path, "missing") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ReleaseError(path, f"invalid JSON ({error})") from error
        means = {}
        # The reference orders lab columns by sorted(labs_means.keys()).
        for key in sorted(values):
            itemid = key.removesuffix("_percentile")
            if not itemid.isdigit() or not isinstance(values[key], int | float):
                raise ReleaseError(path, f"entry {key!r}: '<itemid>_percentile': number expected")
            means[int(itemid)] = float(values[key])
        if not means:
            raise ReleaseError(path, "no labs")
        return means

    @property
    def itemids(self) -> list[int]:
        """The labs' itemids in column order."""
        return list(self.labs_means)

    # ------------------------------------------------------------------ tensors
    def tensor(self, split: str, name: str) -> np.ndarray:
        """A release tensor as a read-only array, memory-mapped (never loaded whole)."""
        path = self.tensor_path(split, name)
        if path.suffix == ".npy":
            try:
                return np.load(path, mmap_mode="r")
            except ValueError as error:
                raise ReleaseError(path, f"not a readable .npy array ({error})") from error
        return _read_pt(path)

    def checked_tensors(self, split: str) -> dict[str, np.ndarray]:
        """A split's tensors, memory-mapped, with shapes checked against each other."""
        arrays = {name: self.tensor(split, name) for name in self.tensor_names(split)}
        n = arrays["hadm_id"].shape[0]
        n_labs = len(self.labs_means)
        expected = {
            "cxr": (n, 3, CXR_SIZE, CXR_SIZE),
            "ecg": (n, 1, ECG_SAMPLES, len(RELEASE_ECG_LEADS)),
            "labs_percentiles": (n, n_labs),
            "labs_missingness": (n, n_labs),
            "hadm_id": (n,),
            "label_hadm_id": (n,),
            "label": (n,),
        }
        for name, array in arrays.items():
            path = self.tensor_path(split, name)
            if tuple(array.shape) != expected[name]:
                raise ReleaseError(path, f"shape {list(array.shape)}, expected {expected[name]}")
            floating = name in ("cxr", "ecg", "labs_percentiles")
            kind = "f" if floating else "iu"
            if array.dtype.kind not in kind:
                wanted = "floating point" if floating else "integer"
                raise ReleaseError(path, f"dtype {array.dtype}, {wanted} expected")
        return arrays


def _read_pt(path: Path) -> np.ndarray:
    """A .pt tensor (torch.save) memory-mapped as numpy, read with weights_only=True."""
    import pickle
    import zipfile

    import torch

    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise ReleaseError(path, "refused: it holds objects other than a tensor") from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ReleaseError(
            path, f"not a readable torch.save zip file ({type(error).__name__})"
        ) from error
    if not isinstance(tensor, torch.Tensor):
        raise ReleaseError(path, f"a tensor expected, found {type(tensor).__name__}")
    return tensor.numpy()


# ---------------------------------------------------------------------------------------
# Conversions of the released tensors into our stored formats (pure functions).


def cxr_release_to_grey(cxr: np.ndarray, path: Path | str = "cxr") -> tuple[np.ndarray, float]:
    """Released CXRs float [B, 3, S, S] ImageNet-normalised grey -> (uint8 [B, 1, S, S], the
    largest distance of a pixel from its grey level, in levels); ReleaseError when the three
    channels disagree or pixels are not k/255 (the conversion would not be lossless)."""
    x = np.asarray(cxr, dtype=np.float32)
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
    levels = (x * std + mean) * np.float32(255.0)  # [B, 3, S, S], k in 0..255
    spread = float(np.abs(levels - levels[:, :1]).max()) if levels.size else 0.0
    if spread > GREY_TOLERANCE:
        raise ReleaseError(path, f"channels differ by {spread:.3f} grey levels: not a grey image")
    rounded = np.rint(levels[:, :1])
    error = float(np.abs(levels[:, :1] - rounded).max()) if levels.size else 0.0
    if error > GREY_TOLERANCE or (rounded.size and (rounded.min() < 0 or rounded.max() > 255)):
        raise ReleaseError(
            path, f"pixels are not k/255 grey levels (off by up to {error:.3f} levels)"
        )
    return rounded.astype(np.uint8), error


def ecg_release_to_canonical(ecg: np.ndarray) -> np.ndarray:
    """Released ECGs float [B, 1, T, 12] (MIMIC-IV-ECG lead order) -> float32 [B, 12, T]
    in the canonical order I II III aVR aVL aVF V1-V6."""
    x = np.asarray(ecg, dtype=np.float32)[:, 0]  # [B, T, 12]
    return np.ascontiguousarray(x[:, :, list(CANONICAL_FROM_RELEASE)].transpose(0, 2, 1))


# ---------------------------------------------------------------------------------------
# The plan: which rows of which release tensors become which rows of our splits.


@dataclass
class SplitPlan:
    """One of our splits: the release split its tensors come from and the rows it keeps.

    `frame`: the CSV rows kept (index 0..N-1); `rows` int64 [N] into the release tensors;
    `candidates`: long-format candidate rows (query_row, position, candidate_row, is_true).
    """

    split: str
    source: str
    rows: np.ndarray
    frame: pd.DataFrame
    candidates: pd.DataFrame | None = None


def _check_ids(release: SymileMimicRelease, split: str, frame: pd.DataFrame) -> None:
    """The tensors' id columns equal the CSV's (read_csv checked it has them), row by row."""
    columns = ["hadm_id", *(RETRIEVAL_TENSOR_NAMES if split in RETRIEVAL_SPLITS else ())]
    for column in columns:
        tensor = np.asarray(release.tensor(split, column), dtype=np.int64)
        listed = frame[column].to_numpy(dtype=np.int64)
        if tensor.shape != listed.shape or not np.array_equal(tensor, listed):
            raise ReleaseError(
                release.tensor_path(split, column),
                f"differs from {release.csv_path(split).name}'s {column} column (row order)",
            )


def _candidate_table(
    release: SymileMimicRelease, split: str, frame: pd.DataFrame, row_of: dict[int, int]
) -> pd.DataFrame:
    """Candidates of a retrieval split in our rows: the query first, then its negatives."""
    path = release.csv_path(split)
    label = frame["label"].to_numpy(np.int64)
    label_hadm = frame["label_hadm_id"].to_numpy(np.int64)
    hadm = frame["hadm_id"].to_numpy(np.int64)
    if not np.isin(label, (0, 1)).all():
        raise ReleaseError(path, "label must be 0 or 1")
    positives = label == 1
    if not (hadm[positives] == label_hadm[positives]).all():
        raise ReleaseError(path, "a label-1 row whose label_hadm_id is not its own hadm_id")
    unknown = sorted(set(hadm.tolist()) - set(row_of))
    if unknown:
        raise ReleaseError(path, f"candidates {unknown[:5]} are not admissions of the split")
    queries = hadm[positives]
    if len(set(queries.tolist())) != len(queries):
        raise ReleaseError(path, "an admission is a query twice")
    rows = []
    order = np.argsort(label_hadm, kind="stable")  # each query's rows, in file order
    grouped = np.split(order, np.flatnonzero(np.diff(label_hadm[order])) + 1)
    by_query = {int(label_hadm[g[0]]): g for g in grouped if g.size}
    k = None
    for query in queries:
        group = by_query[int(query)]
        negatives = [i for i in group if not positives[i]]
        if any(hadm[i] == query for i in negatives):
            raise ReleaseError(path, f"hadm_id {query} is its own negative candidate")
        members = [int(query), *(int(hadm[i]) for i in negatives)]
        if k is None:
            k = len(members)
        if len(members) != k:
            raise ReleaseError(path, f"hadm_id {query} has {len(members)} candidates, not {k}")
        for position, candidate in enumerate(members):
            rows.append((row_of[int(query)], position, row_of[candidate], position == 0))
    unmatched = set(label_hadm.tolist()) - set(queries.tolist())
    if unmatched:
        raise ReleaseError(path, f"label_hadm_id {sorted(unmatched)[:5]} has no query row")
    table = pd.DataFrame(rows, columns=["query_row", "position", "candidate_row", "is_true"])
    return table.astype({"query_row": np.int64, "position": np.int64, "candidate_row": np.int64})


def plan_import(release: SymileMimicRelease) -> dict[str, SplitPlan]:
    """Our train, val and test splits from the release, with ids checked against its CSVs."""
    release.check_complete()
    for split in RELEASE_SPLITS:
        release.checked_tensors(split)
    plans = {}
    for split, (source, retrieval) in SPLIT_SOURCES.items():
        frame = release.read_csv(source)
        _check_ids(release, source, frame)
        if source == "test":
            rows = np.flatnonzero(frame["label"].to_numpy(np.int64) == 1)
        else:
            rows = np.arange(len(frame))
        kept = frame.iloc[rows].reset_index(drop=True)
        hadm = kept["hadm_id"].to_numpy(np.int64)
        if len(set(hadm.tolist())) != len(hadm):
            raise ReleaseError(release.csv_path(source), "an admission appears twice")
        plan = SplitPlan(split, source, rows.astype(np.int64), kept)
        if retrieval is not None:
            retrieval_frame = frame if retrieval == source else release.read_csv(retrieval)
            if retrieval != source:
                _check_ids(release, retrieval, retrieval_frame)
            row_of = {int(h): i for i, h in enumerate(hadm)}
            plan.candidates = _candidate_table(release, retrieval, retrieval_frame, row_of)
            queried = set(retrieval_frame.loc[retrieval_frame["label"] == 1, "hadm_id"].tolist())
            if queried != set(row_of):
                raise ReleaseError(
                    release.csv_path(retrieval),
                    f"its queries are not exactly the {split} admissions of {source}.csv",
                )
        plans[split] = plan
    _check_patient_disjoint(release, plans)
    return plans


def _check_patient_disjoint(release: SymileMimicRelease, plans: dict[str, SplitPlan]) -> None:
    subjects = {s: set(p.frame["subject_id"].astype(np.int64).tolist()) for s, p in plans.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = subjects[a] & subjects[b]
        if shared:
            raise ReleaseError(
                release.root, f"{len(shared)} patients are in both {a} and {b} (not disjoint)"
            )


# ---------------------------------------------------------------------------------------
# Labs: the released tensors, checked against the CSVs they were made from.


def lab_arrays(
    release: SymileMimicRelease, plan: SplitPlan
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(percentiles float32 [N, L], observed uint8 [N, L], checks) of a split, checked
    against the CSV: observed = the raw value is present, percentile = the CSV's (observed)
    or labs_means (missing)."""
    percentiles = np.asarray(release.tensor(plan.source, "labs_percentiles"))[plan.rows]
    missingness = np.asarray(release.tensor(plan.source, "labs_missingness"))[plan.rows]
    path = release.tensor_path(plan.source, "labs_missingness")
    if not np.isin(missingness, (0, 1)).all():
        raise ReleaseError(path, "values other than 0 and 1")
    observed = missingness.astype(np.uint8)  # the release's 1 means observed
    itemids = release.itemids
    checks: dict[str, float] = {}
    present = plan.frame[[str(i) for i in itemids]].notna().to_numpy()  # read_csv checked them
    if not np.array_equal(present, observed.astype(bool)):
        wrong = int((present != observed.astype(bool)).sum())
        raise ReleaseError(
            path,
            f"{wrong} entries disagree with {release.csv_path(plan.source).name}'s lab "
            "values under '1 = observed' in ascending itemid order",
        )
    checks["observed_matches_csv"] = 1.0
    fill = np.asarray(list(release.labs_means.values()), np.float32)
    off_fill = np.abs(percentiles - fill[None, :])[observed == 0]
    checks["max_fill_error"] = float(off_fill.max()) if off_fill.size else 0.0
    if checks["max_fill_error"] > LAB_TOLERANCE:
        raise ReleaseError(
            release.tensor_path(plan.source, "labs_percentiles"),
            f"missing labs are not filled with labs_means.json (off by {off_fill.max():.3g})",
        )
    pct_columns = [f"{i}_percentile" for i in itemids]
    if all(c in plan.frame.columns for c in pct_columns):
        listed = plan.frame[pct_columns].to_numpy(np.float64)
        diff = np.abs(percentiles - listed)[observed == 1]
        checks["max_csv_percentile_error"] = float(diff.max()) if diff.size else 0.0
        if checks["max_csv_percentile_error"] > LAB_TOLERANCE:
            raise ReleaseError(
                release.tensor_path(plan.source, "labs_percentiles"),
                f"observed percentiles differ from the CSV's by up to {diff.max():.3g}",
            )
    return percentiles.astype(np.float32), observed, checks


def labs_spec(
    release: SymileMimicRelease, train: pd.DataFrame, train_observed: np.ndarray
) -> list[dict[str, Any]]:
    """dataset.json's labs list: each lab's catalogue description, its sorted training
    values (the reference's ECDF), its fill value from labs_means.json, and the rule."""
    specs = []
    for column, (itemid, fill) in enumerate(release.labs_means.items()):
        cdf = np.sort(train[str(itemid)].dropna().to_numpy(np.float64))  # read_csv checked it
        try:
            item = lab_by_itemid(itemid)
            label, fluid, unit = item.label, item.fluid, item.unit
        except KeyError:
            label, fluid, unit = str(itemid), "", ""
        specs.append(
            {
                "itemid": int(itemid),
                "label": label,
                "fluid": fluid,
                "unit": unit,
                "cdf_values": cdf.tolist(),
                "percentile_rule": PERCENTILE_RULE,
                "fill_percentile": float(fill),
                "n_train_observed": int(train_observed[:, column].sum()),
            }
        )
    return specs


def percentile_rule_error(
    specs: list[dict[str, Any]], frame: pd.DataFrame, percentiles: np.ndarray, observed: np.ndarray
) -> float:
    """Largest difference between the released percentiles and those the dataset.json rule
    computes from the CSV's raw values (what an uploaded lab panel gets)."""
    raw = frame[[str(spec["itemid"]) for spec in specs]].to_numpy(np.float64)
    recomputed = percentiles_from_cdf(raw, observed, specs)
    diff = np.abs(recomputed - percentiles)[observed == 1]
    return float(diff.max()) if diff.size else 0.0


# ---------------------------------------------------------------------------------------
# Streaming the big arrays, resumably.


@dataclass
class StreamStats:
    """What the streaming measured: the largest rounding of each conversion."""

    cxr_grey_error_levels: float = 0.0
    ecg_float16_error: float = 0.0
    rows_written: dict[str, int] = field(default_factory=dict)


def _chunks(n: int, size: int, start: int = 0) -> Iterator[slice]:
    for begin in range(start, n, size):
        yield slice(begin, min(begin + size, n))


class _Staging:
    """OUT/dataset/.import/: partial arrays and their progress, until each is committed,
    and `release.json` naming the release being imported (what a resume must match)."""

    def __init__(self, dataset: DatasetDir) -> None:
        self.folder = dataset.path / ".import"
        self.marker = self.folder / "release.json"

    @classmethod
    def claim(cls, dataset: DatasetDir, release: SymileMimicRelease) -> _Staging:
        """The staging of an import of `release` into `dataset`: a new one in an empty (or
        absent) folder, or the one a killed import of the same release left; anything else
        is refused, so that no array of another dataset or release is taken as done."""
        staging = cls(dataset)
        identity = {
            "release": str(release.root),
            "tensors": {
                str(release.tensor_path(s, n).relative_to(release.root)): release.tensor_path(s, n)
                .stat()
                .st_size
                for s in RELEASE_SPLITS
                for n in release.tensor_names(s)
            },
        }
        if dataset.path.exists() and any(dataset.path.iterdir()):
            try:
                found = json.loads(staging.marker.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                found = None
            if found != identity:
                raise ReleaseError(
                    dataset.path,
                    "not empty, and not an unfinished import of this release: choose another --out",
                )
            for folder in (dataset.path, *(dataset.split_dir(s) for s in SPLIT_SOURCES)):
                if folder.is_dir():
                    remove_stale_temporaries(folder)
        staging.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(staging.marker, identity)
        return staging

    def partial(self, split: str, name: str) -> Path:
        return self.folder / f"{split}.{name}.npy"

    def progress(self, split: str, name: str) -> Path:
        return self.folder / f"{split}.{name}.json"

    def rows_done(self, split: str, name: str, shape: tuple[int, ...], dtype: str) -> int:
        """Rows a killed run committed for this array (0 when none or incompatible)."""
        try:
            state = json.loads(self.progress(split, name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return 0
        if state.get("shape") != list(shape) or state.get("dtype") != dtype:
            return 0
        if not self.partial(split, name).is_file():
            return 0
        return int(state.get("rows_done", 0))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _stream_array(
    staging: _Staging,
    dataset: DatasetDir,
    plan: SplitPlan,
    name: str,
    shape: tuple[int, ...],
    dtype: type,
    convert: Any,
    source: np.ndarray,
    bar: tqdm,
    chunk_rows: int,
) -> None:
    """Fill DATASET/<split>/<name>.npy chunk by chunk from `source[plan.rows]` through
    `convert`, committing progress after each chunk; the array is renamed in when full."""
    final = dataset.array_path(plan.split, name)
    if final.is_file():
        existing = np.load(final, mmap_mode="r")
        if tuple(existing.shape) == shape and existing.dtype == np.dtype(dtype):
            bar.update(shape[0])
            return
    partial = staging.partial(plan.split, name)
    dtype_name = np.dtype(dtype).name
    done = staging.rows_done(plan.split, name, shape, dtype_name)
    if done:
        target = np.lib.format.open_memmap(partial, mode="r+")
        log.info("resuming %s/%s.npy at row %d of %d", plan.split, name, done, shape[0])
    else:
        target = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
    bar.update(done)
    for part in _chunks(shape[0], chunk_rows, done):
        rows = plan.rows[part]
        contiguous = rows.size and rows[-1] - rows[0] + 1 == rows.size
        block = source[rows[0] : rows[-1] + 1] if contiguous else source[rows]
        target[part] = convert(np.asarray(block))
        target.flush()
        # Data first, then the record that it is there: a kill between them redoes a chunk.
        write_json_atomic(
            staging.progress(plan.split, name),
            {"rows_done": part.stop, "shape": list(shape), "dtype": dtype_name},
        )
        bar.update(part.stop - part.start)
    target.flush()
    del target
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)
    staging.progress(plan.split, name).unlink(missing_ok=True)


def _check_candidate_copies(release: SymileMimicRelease, plan: SplitPlan, retrieval: str) -> None:
    """A retrieval split's rows repeat their admission's tensors: compare all labs and the
    CXR and ECG of a few rows with the rows this import keeps."""
    frame = release.read_csv(retrieval)
    row_of = {int(h): i for i, h in enumerate(plan.frame["hadm_id"].to_numpy(np.int64))}
    ours = np.asarray([row_of[int(h)] for h in frame["hadm_id"].to_numpy(np.int64)])
    source_rows = plan.rows[ours]
    for name in ("labs_percentiles", "labs_missingness"):
        copies = np.asarray(release.tensor(retrieval, name))
        kept = np.asarray(release.tensor(plan.source, name))[source_rows]
        if not np.allclose(copies, kept, atol=LAB_TOLERANCE):
            raise ReleaseError(
                release.tensor_path(retrieval, name),
                f"rows differ from the same admissions in {plan.source}",
            )
    sample = np.unique(np.linspace(0, len(frame) - 1, min(CHECK_ROWS, len(frame))).astype(int))
    for name in ("cxr", "ecg"):
        copies = np.asarray(release.tensor(retrieval, name)[sample], np.float32)
        kept = np.asarray(release.tensor(plan.source, name)[source_rows[sample]], np.float32)
        if not np.allclose(copies, kept, atol=1e-5):
            raise ReleaseError(
                release.tensor_path(retrieval, name),
                f"rows differ from the same admissions in {plan.source}",
            )


# ---------------------------------------------------------------------------------------
# Tables and the commit.


def manifest_rows(
    plan: SplitPlan, cohort: pd.DataFrame | None, observed: np.ndarray
) -> pd.DataFrame:
    """manifest.parquet rows of one split (docs/formats.md's columns): ids from the CSV and
    the MIMIC paths; times from symile_mimic_data.csv when the release has it (else NaT)."""
    frame = plan.frame
    ids = ids_from_paths(frame["ecg_path"], frame["cxr_path"])
    times = pd.DataFrame(index=range(len(frame)))
    for ours, theirs in (
        ("ecg_time", "ecg_time"),
        ("cxr_time", "cxr_StudyDateTime"),
        ("admittime", "admittime"),
    ):
        times[ours] = pd.NaT
        if cohort is not None and theirs in cohort.columns:
            lookup = cohort.drop_duplicates("hadm_id").set_index("hadm_id")[theirs]
            times[ours] = pd.to_datetime(frame["hadm_id"].map(lookup), errors="coerce").values
    if cohort is not None:
        table = cohort.drop_duplicates("hadm_id").set_index("hadm_id")
        for ours, theirs in (("ecg_study_id", "ecg_study_id"), ("cxr_study_id", "cxr_study_id")):
            if theirs in table.columns:
                mapped = pd.to_numeric(frame["hadm_id"].map(table[theirs]), errors="coerce")
                ids[ours] = mapped.fillna(ids[ours]).astype(np.int64).to_numpy()
        if "cxr_dicom_id" in table.columns:
            ids["dicom_id"] = frame["hadm_id"].map(table["cxr_dicom_id"]).fillna(ids["dicom_id"])
    return pd.DataFrame(
        {
            "split": pd.Series([plan.split] * len(frame), dtype=object),
            "row": np.arange(len(frame), dtype=np.int64),
            "subject_id": frame["subject_id"].to_numpy(np.int64),
            "hadm_id": frame["hadm_id"].to_numpy(np.int64),
            "ecg_study_id": ids["ecg_study_id"].to_numpy(np.int64),
            "ecg_path": frame["ecg_path"].astype(str).to_numpy(dtype=object),
            "ecg_time": times["ecg_time"].to_numpy(dtype="datetime64[ns]"),
            "dicom_id": ids["dicom_id"].astype(str).to_numpy(dtype=object),
            "cxr_study_id": ids["cxr_study_id"].to_numpy(np.int64),
            "cxr_path": frame["cxr_path"].astype(str).to_numpy(dtype=object),
            "cxr_time": times["cxr_time"].to_numpy(dtype="datetime64[ns]"),
            "admittime": times["admittime"].to_numpy(dtype="datetime64[ns]"),
            "n_labs_observed": observed.sum(axis=1).astype(np.int64),
        }
    )


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


@dataclass
class ImportSummary:
    """What an import wrote: split sizes, queries and candidates per split, the checks."""

    dataset: DatasetDir
    splits: dict[str, int]
    queries: dict[str, int]
    candidates_per_query: int
    checks: dict[str, Any]
    skipped: bool = False


def import_release_dataset(
    release: SymileMimicRelease,
    dataset: DatasetDir,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
) -> ImportSummary:
    """Import a release into our dataset directory (see the module docstring).

    Skips when `dataset` is already a complete import of this release; a killed import
    resumes from its last committed chunk.
    """
    if dataset.is_complete():
        source = dataset.info.get("source", {})
        if source.get("kind") == "symile-mimic-release" and source.get("release") == str(
            release.root
        ):
            log.info("%s is already imported from %s", dataset.path, release.root)
            return _summary_of(dataset)
        raise ReleaseError(dataset.path, "holds another dataset: choose another --out")
    plans = plan_import(release)
    cohort = release.read_cohort_csv()
    staging = _Staging.claim(dataset, release)
    checks: dict[str, Any] = {}
    labs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, plan in plans.items():
        percentiles, observed, split_checks = lab_arrays(release, plan)
        labs[split] = (percentiles, observed)
        checks[f"labs_{split}"] = split_checks
    specs = labs_spec(release, plans["train"].frame, labs["train"][1])
    checks["percentile_rule_max_error"] = max(
        percentile_rule_error(specs, plans[s].frame, *labs[s]) for s in plans
    )
    if checks["percentile_rule_max_error"] > LAB_TOLERANCE:
        log.warning(
            "the %s rule reproduces the released percentiles only to %.3g",
            PERCENTILE_RULE,
            checks["percentile_rule_max_error"],
        )
    for split, plan in plans.items():
        retrieval = SPLIT_SOURCES[split][1]
        if retrieval is not None:
            _check_candidate_copies(release, plan, retrieval)

    stats = StreamStats()
    total = 2 * sum(len(p.rows) for p in plans.values())
    with tqdm(total=total, desc="import", unit="row", disable=not progress) as bar:
        for split, plan in plans.items():
            dataset.split_dir(split).mkdir(exist_ok=True)
            n = len(plan.rows)
            cxr_path = release.tensor_path(plan.source, "cxr")

            def to_grey(block: np.ndarray, path: Path = cxr_path) -> np.ndarray:
                grey, error = cxr_release_to_grey(block, path)
                stats.cxr_grey_error_levels = max(stats.cxr_grey_error_levels, error)
                return grey

            def to_ecg(block: np.ndarray) -> np.ndarray:
                canonical = ecg_release_to_canonical(block)
                stored = canonical.astype(np.float16)
                error = float(np.abs(stored.astype(np.float32) - canonical).max(initial=0.0))
                stats.ecg_float16_error = max(stats.ecg_float16_error, error)
                return stored

            _stream_array(
                staging,
                dataset,
                plan,
                "ecg",
                (n, 12, ECG_SAMPLES),
                np.float16,
                to_ecg,
                release.tensor(plan.source, "ecg"),
                bar,
                chunk_rows * 4,  # an ECG row is 8x smaller than a CXR row
            )
            _stream_array(
                staging,
                dataset,
                plan,
                "cxr",
                (n, 1, CXR_SIZE, CXR_SIZE),
                np.uint8,
                to_grey,
                release.tensor(plan.source, "cxr"),
                bar,
                chunk_rows,
            )
            percentiles, observed = labs[split]
            for name, values in (("labs", percentiles), ("labs_observed", observed)):
                with atomic_path(dataset.array_path(split, name)) as tmp, tmp.open("wb") as out:
                    np.save(out, values)
            stats.rows_written[split] = n
    checks["cxr_grey_max_error_levels"] = stats.cxr_grey_error_levels
    checks["ecg_float16_max_error"] = stats.ecg_float16_error

    manifest = pd.concat(
        [manifest_rows(plans[s], cohort, labs[s][1]) for s in plans], ignore_index=True
    )
    candidates = pd.concat(
        [
            plan.candidates.assign(split=split)[
                ["split", "query_row", "position", "candidate_row", "is_true"]
            ]
            for split, plan in plans.items()
            if plan.candidates is not None
        ],
        ignore_index=True,
    )
    _write_parquet(manifest, dataset.manifest_path)
    _write_parquet(candidates, dataset.candidates_path)
    write_quarantine(pd.DataFrame(columns=list(QUARANTINE_COLUMNS)), dataset.quarantine_path)
    sizes = {split: len(plan.rows) for split, plan in plans.items()}
    queries = {
        s: int(p.candidates["query_row"].nunique())
        for s, p in plans.items()
        if p.candidates is not None
    }
    k = int(candidates.groupby(["split", "query_row"]).size().iloc[0])
    report = {
        "source": "symile-mimic release",
        "release": str(release.root),
        "splits": sizes,
        "queries": queries,
        "candidates_per_query": k,
        "release_rows": {s: len(release.read_csv(s)) for s in RELEASE_SPLITS},
        "quarantined": 0,
        "checks": checks,
    }
    write_text_atomic(dataset.report_path, json.dumps(report, indent=2, default=str))
    info = {
        "schema_version": 1,
        "created_by": "symile-clinical import-release",
        "seed": 0,
        "cxr_size": CXR_SIZE,
        "ecg": {
            "sampling_hz": layout.ECG_SAMPLING_HZ,
            "samples": ECG_SAMPLES,
            "leads": list(layout.CANONICAL_ECG_LEADS),
            "normalisation": "minmax",
        },
        "cxr": {
            "stored": "uint8 grey, recovered from the release's ImageNet-normalised float32",
            "model_input": "resize to 320 + 3-channel ImageNet normalisation (in the model)",
        },
        "labs": specs,
        "splits": sizes,
        "candidates_per_query": k,
        "cohort": COHORT_WINDOWS,
        "source": {"kind": "symile-mimic-release", "release": str(release.root)},
    }
    write_text_atomic(dataset.dataset_json_path, json.dumps(info, indent=1))
    staging.remove()
    log.info("imported %s into %s: %s", release.root, dataset.path, sizes)
    return ImportSummary(dataset, sizes, queries, k, checks)


def _summary_of(dataset: DatasetDir) -> ImportSummary:
    """The summary of a finished import, from its report."""
    report = json.loads(dataset.report_path.read_text())
    return ImportSummary(
        dataset,
        dict(report["splits"]),
        dict(report["queries"]),
        int(report["candidates_per_query"]),
        dict(report["checks"]),
        skipped=True,
    )
