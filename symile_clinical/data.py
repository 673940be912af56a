"""Datasets over a preprocessed dataset directory (docs/formats.md): memmapped per-split arrays.

A split folder holds ecg.npy float16 [N, 12, 5000], labs.npy float32 [N, L],
labs_observed.npy uint8 [N, L] (1 = observed) and cxr.npy uint8 [N, 1, S, S]. They are
opened with mmap_mode="r", so a dataset far larger than memory trains without loading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
ARRAY_NAMES = ("ecg", "labs", "labs_observed", "cxr")


class DatasetError(ValueError):
    """A dataset directory that does not follow docs/formats.md; names the file and reason."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_dataset_json(dataset_dir: Path | str) -> dict[str, Any]:
    """The parsed DATASET/dataset.json."""
    path = Path(dataset_dir) / "dataset.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise DatasetError(path, "missing: not a preprocessed dataset directory") from error
    except json.JSONDecodeError as error:
        raise DatasetError(path, f"invalid JSON: {error}") from error


def fill_percentiles(dataset_json: dict[str, Any]) -> np.ndarray:
    """float32 [L]: the percentile each lab is filled with when missing (dataset.json order)."""
    return np.asarray([lab["fill_percentile"] for lab in dataset_json["labs"]], dtype=np.float32)


class SplitArrays:
    """One split's four arrays, memory-mapped read-only; checks shapes and dtypes agree.

    Attributes `ecg` float16 [N, 12, T], `labs` float32 [N, L], `labs_observed` uint8 [N, L],
    `cxr` uint8 [N, 1, S, S]; `len()` is N.
    """

    def __init__(self, dataset_dir: Path | str, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        folder = self.dataset_dir / split
        arrays = {}
        for name in ARRAY_NAMES:
            path = folder / f"{name}.npy"
            try:
                arrays[name] = np.load(path, mmap_mode="r")
            except FileNotFoundError as error:
                raise DatasetError(path, "missing") from error
            except ValueError as error:
                raise DatasetError(path, f"not a readable .npy array: {error}") from error
        self.ecg: np.ndarray = arrays["ecg"]
        self.labs: np.ndarray = arrays["labs"]
        self.labs_observed: np.ndarray = arrays["labs_observed"]
        self.cxr: np.ndarray = arrays["cxr"]
        self._check(folder)

    def _check(self, folder: Path) -> None:
        expected = {"ecg": 3, "labs": 2, "labs_observed": 2, "cxr": 4}
        for name, ndim in expected.items():
            array = getattr(self, name)
            if array.ndim != ndim:
                raise DatasetError(folder / f"{name}.npy", f"{ndim}-D expected, got {array.shape}")
        n = self.ecg.shape[0]
        for name in ARRAY_NAMES:
            if getattr(self, name).shape[0] != n:
                raise DatasetError(folder, f"row counts differ: {self.shapes()}")
        if self.labs.shape != self.labs_observed.shape:
            raise DatasetError(folder, f"labs and labs_observed differ: {self.shapes()}")
        if self.cxr.shape[1] != 1 or self.cxr.shape[2] != self.cxr.shape[3]:
            raise DatasetError(folder / "cxr.npy", f"[N, 1, S, S] expected, got {self.cxr.shape}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each array's shape, by name."""
        return {name: tuple(getattr(self, name).shape) for name in ARRAY_NAMES}

    @property
    def n_labs(self) -> int:
        """L, the number of labs."""
        return int(self.labs.shape[1])

    def __len__(self) -> int:
        return int(self.ecg.shape[0])

    def batch(self, rows: np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """Rows (any order) as model-ready tensors, read in ascending order for the memmap.

        Returns {"ecg" float32 [B, 12, T], "labs" float32 [B, L], "labs_observed" float32
        [B, L], "cxr" float32 [B, 1, S, S] in [0, 1], "row" int64 [B]}.
        """
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return {
            "ecg": torch.from_numpy(self.ecg[sorted_rows][back].astype(np.float32)),
            "labs": torch.from_numpy(self.labs[sorted_rows][back].astype(np.float32)),
            "labs_observed": torch.from_numpy(
                self.labs_observed[sorted_rows][back].astype(np.float32)
            ),
            "cxr": torch.from_numpy(_cxr_to_unit(self.cxr[sorted_rows][back])),
            "row": torch.from_numpy(rows.copy()),
        }


def _cxr_to_unit(cxr: np.ndarray) -> np.ndarray:
    """uint8 (0..255) or float16 (already in [0, 1]) CXR pixels -> float32 in [0, 1]."""
    if cxr.dtype == np.uint8:
        return cxr.astype(np.float32) / np.float32(255.0)
    return cxr.astype(np.float32)


class MemmapDataset(Dataset):
    """A split as a torch Dataset of dicts {"ecg", "labs", "labs_observed", "cxr", "row"}.

    ecg float32 [12, T], labs float32 [L], labs_observed float32 [L] (1 = observed), cxr
    float32 [1, S, S] in [0, 1], row int64 scalar. The memmaps are opened lazily in each
    process, so DataLoader workers share the page cache rather than pickled copies.
    """

    def __init__(self, dataset_dir: Path | str, split: str) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        self._arrays: SplitArrays | None = SplitArrays(dataset_dir, split)
        self._length = len(self._arrays)

    @property
    def arrays(self) -> SplitArrays:
        """The split's memmaps, opened in this process on first use."""
        if self._arrays is None:
            self._arrays = SplitArrays(self.dataset_dir, self.split)
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        # A pickled np.memmap carries its whole contents; workers reopen the files instead.
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        arrays = self.arrays
        return {
            "ecg": torch.from_numpy(np.array(arrays.ecg[index], dtype=np.float32)),
            "labs": torch.from_numpy(np.array(arrays.labs[index], dtype=np.float32)),
            "labs_observed": torch.from_numpy(
                np.array(arrays.labs_observed[index], dtype=np.float32)
            ),
            "cxr": torch.from_numpy(_cxr_to_unit(np.asarray(arrays.cxr[index]))),
            "row": torch.tensor(index, dtype=torch.int64),
        }


@dataclass(frozen=True)
class CandidateSets:
    """A split's evaluation candidate sets from candidates.parquet, as dense arrays.

    query_rows int64 [Q]; candidate_rows int64 [Q, K] in the shown order; true_position
    int64 [Q] (column of candidate_rows holding the query's own CXR).
    """

    query_rows: np.ndarray
    candidate_rows: np.ndarray
    true_position: np.ndarray

    def __len__(self) -> int:
        return int(self.query_rows.shape[0])


def load_candidate_sets(dataset_dir: Path | str, split: str) -> CandidateSets:
    """Read candidates.parquet for one split; checks every query has K candidates, one true."""
    path = Path(dataset_dir) / "candidates.parquet"
    try:
        table = pd.read_parquet(
            path, columns=["split", "query_row", "position", "candidate_row", "is_true"]
        )
    except FileNotFoundError as error:
        raise DatasetError(path, "missing") from error
    table = table[table["split"] == split].sort_values(["query_row", "position"], kind="stable")
    if table.empty:
        empty = np.zeros((0,), dtype=np.int64)
        return CandidateSets(empty, np.zeros((0, 0), dtype=np.int64), empty)
    counts = table.groupby("query_row", sort=True).size()
    k = int(counts.iloc[0])
    if (counts != k).any():
        raise DatasetError(path, f"{split}: queries have different numbers of candidates")
    q = len(counts)
    candidate_rows = table["candidate_row"].to_numpy(np.int64).reshape(q, k)
    is_true = table["is_true"].to_numpy(bool).reshape(q, k)
    if not (is_true.sum(axis=1) == 1).all():
        raise DatasetError(path, f"{split}: every query needs exactly one true candidate")
    query_rows = counts.index.to_numpy(np.int64)
    true_position = is_true.argmax(axis=1).astype(np.int64)
    if not (candidate_rows[np.arange(q), true_position] == query_rows).all():
        raise DatasetError(path, f"{split}: a true candidate is not the query's own row")
    return CandidateSets(query_rows, candidate_rows, true_position)
