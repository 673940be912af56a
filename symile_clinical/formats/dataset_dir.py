"""The dataset directory (docs/formats.md): the one place its file names and rules live.

```
DATASET/
  dataset.json  manifest.parquet  candidates.parquet  preprocess_report.json  quarantine.csv
  train/ val/ test/   ecg.npy labs.npy labs_observed.npy cxr.npy
```

`DatasetDir` names every file, reads dataset.json (once), the lab list and its fill values
(checked against the arrays), each split's memmapped arrays (`SplitArrays`), the manifest
and the candidate sets. preprocessing writes through the same names. Torch-free: the
batch conversion to tensors imports torch only when it is called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from symile_clinical.errors import SymileClinicalError
from symile_clinical.formats.folder import FormatDir

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val", "test")
ARRAY_NAMES = ("ecg", "labs", "labs_observed", "cxr")
_ARRAY_NDIM = {"ecg": 3, "labs": 2, "labs_observed": 2, "cxr": 4}


class DatasetError(SymileClinicalError):
    """A dataset directory that does not follow docs/formats.md; names the file and reason."""


def cxr_to_unit(cxr: np.ndarray) -> np.ndarray:
    """Stored CXR pixels -> float32 in [0, 1]: uint8 0..255 is divided by 255, float16 is
    already in [0, 1]. The one place the stored CXR dtype is interpreted."""
    if cxr.dtype == np.uint8:
        return cxr.astype(np.float32) / np.float32(255.0)
    return np.clip(cxr.astype(np.float32), 0.0, 1.0)


def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] for rows in any order, read in ascending order (a memmap reads forward)."""
    order = np.argsort(rows, kind="stable")
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return array[rows[order]][back]


def no_lab_observed(observed: np.ndarray) -> np.ndarray:
    """Whether each row of observed flags [..., L] (1 = observed) has no lab at all: the rows
    Gated Symile sends to its NULL option and evaluation counts as labs-missing."""
    return np.asarray(observed).sum(axis=-1) == 0


class SplitArrays:
    """One split's four arrays, memory-mapped read-only; checks shapes and dtypes agree.

    Attributes `ecg` float16 [N, 12, T], `labs` float32 [N, L], `labs_observed` uint8 [N, L],
    `cxr` uint8 [N, 1, S, S] (or float16 in [0, 1]); `len()` is N.
    """

    def __init__(self, dataset_dir: Path | str | DatasetDir, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        dataset = dataset_dir if isinstance(dataset_dir, DatasetDir) else DatasetDir(dataset_dir)
        self.dataset_dir = dataset.path
        self.split = split
        arrays = {}
        for name in ARRAY_NAMES:
            path = dataset.array_path(split, name)
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
        self._check(dataset.split_dir(split))

    def _check(self, folder: Path) -> None:
        for name, ndim in _ARRAY_NDIM.items():
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

    @property
    def labs_missing(self) -> np.ndarray:
        """[N] bool: rows with no observed lab (`no_lab_observed`)."""
        return no_lab_observed(self.labs_observed)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each array's shape, by name."""
        return {name: tuple(getattr(self, name).shape) for name in ARRAY_NAMES}

    @property
    def n_labs(self) -> int:
        """L, the number of labs."""
        return int(self.labs.shape[1])

    def __len__(self) -> int:
        return int(self.ecg.shape[0])

    def rows(self, rows: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        """Rows (any order) as model-ready float32 arrays: {"ecg" [B, 12, T], "labs" [B, L],
        "labs_observed" [B, L] (1 = observed), "cxr" [B, 1, S, S] in [0, 1], "row" int64 [B]}."""
        rows = np.asarray(rows, dtype=np.int64)
        return {
            "ecg": _take(self.ecg, rows).astype(np.float32),
            "labs": _take(self.labs, rows).astype(np.float32),
            "labs_observed": _take(self.labs_observed, rows).astype(np.float32),
            "cxr": cxr_to_unit(_take(self.cxr, rows)),
            "row": rows.copy(),
        }

    def batch(self, rows: np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """`rows(rows)` as torch tensors (same keys, shapes and dtypes)."""
        import torch

        return {key: torch.from_numpy(value) for key, value in self.rows(rows).items()}

    def row(self, index: int) -> dict[str, np.ndarray]:
        """One row, as `rows` returns it without the batch axis ("row" a 0-d int64)."""
        return {key: value[0] for key, value in self.rows([index]).items()}


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

    @property
    def k(self) -> int:
        """Candidates per query (0 when there are no queries)."""
        return int(self.candidate_rows.shape[1])


class DatasetDir(FormatDir):
    """A preprocessed dataset directory: its file names, dataset.json, splits and tables.

    `path` is absolute. Reading is lazy: nothing is opened until it is asked for, and
    dataset.json is parsed once.
    """

    DATASET_JSON = "dataset.json"
    MANIFEST = "manifest.parquet"
    CANDIDATES = "candidates.parquet"
    REPORT = "preprocess_report.json"
    QUARANTINE = "quarantine.csv"

    # ------------------------------------------------------------------ file names
    @property
    def dataset_json_path(self) -> Path:
        """DATASET/dataset.json; written last, its presence means the dataset is complete."""
        return self.path / self.DATASET_JSON

    @property
    def manifest_path(self) -> Path:
        """DATASET/manifest.parquet."""
        return self.path / self.MANIFEST

    @property
    def candidates_path(self) -> Path:
        """DATASET/candidates.parquet."""
        return self.path / self.CANDIDATES

    @property
    def report_path(self) -> Path:
        """DATASET/preprocess_report.json."""
        return self.path / self.REPORT

    @property
    def quarantine_path(self) -> Path:
        """DATASET/quarantine.csv."""
        return self.path / self.QUARANTINE

    def split_dir(self, split: str) -> Path:
        """DATASET/<split>/."""
        return self.path / split

    def array_path(self, split: str, name: str) -> Path:
        """DATASET/<split>/<name>.npy for name in ARRAY_NAMES."""
        if name not in ARRAY_NAMES:
            raise ValueError(f"array must be one of {ARRAY_NAMES}, got {name!r}")
        return self.split_dir(split) / f"{name}.npy"

    def is_complete(self) -> bool:
        """Whether dataset.json (the commit of a preprocessing run) exists."""
        return self.dataset_json_path.is_file()

    # ------------------------------------------------------------------ dataset.json
    @cached_property
    def info(self) -> dict[str, Any]:
        """The parsed dataset.json."""
        path = self.dataset_json_path
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as error:
            raise DatasetError(path, "missing: not a preprocessed dataset directory") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DatasetError(path, f"invalid JSON: {error}") from error

    def sha256(self) -> str:
        """Hex SHA-256 of dataset.json: what an index or a demo step records as "this data"."""
        from symile_clinical.formats.checkpoint import file_sha256

        return file_sha256(self.dataset_json_path)

    @property
    def labs_spec(self) -> list[dict[str, Any]]:
        """dataset.json's lab list, in the column order of the labs arrays."""
        try:
            return list(self.info["labs"])
        except (KeyError, TypeError) as error:
            raise DatasetError(self.dataset_json_path, "no 'labs' list") from error

    @property
    def n_labs(self) -> int:
        """L, the number of labs dataset.json lists."""
        return len(self.labs_spec)

    @cached_property
    def fill_values(self) -> np.ndarray:
        """float32 [L]: the percentile each lab is filled with when missing."""
        try:
            return np.asarray([lab["fill_percentile"] for lab in self.labs_spec], np.float32)
        except (KeyError, TypeError) as error:
            raise DatasetError(self.dataset_json_path, "a lab has no fill_percentile") from error

    # ------------------------------------------------------------------ arrays and tables
    def split(self, split: str) -> SplitArrays:
        """A split's memmapped arrays; DatasetError when their labs disagree with dataset.json."""
        arrays = SplitArrays(self, split)
        if arrays.n_labs != self.n_labs:
            raise DatasetError(
                self.dataset_json_path,
                f"{self.n_labs} labs listed, {split} arrays have {arrays.n_labs}",
            )
        return arrays

    def manifest(self, split: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        """manifest.parquet rows (of one split, ordered by row, index 0..N-1, when given)."""
        path = self.manifest_path
        wanted = None if columns is None else list(dict.fromkeys(["split", "row", *columns]))
        try:
            table = pd.read_parquet(path, columns=wanted)
        except FileNotFoundError as error:
            raise DatasetError(path, "missing") from error
        except (OSError, ValueError) as error:
            raise DatasetError(path, f"unreadable: {error}") from error
        if split is not None:
            table = table[table["split"] == split].sort_values("row", kind="stable")
        table = table.reset_index(drop=True)
        return table if columns is None else table[[*columns]]

    def hadm_ids(self, split: str) -> dict[int, int]:
        """{row: hadm_id} of a split; {} when the dataset has no manifest."""
        if not self.manifest_path.exists():
            return {}
        part = self.manifest(split, columns=["row", "hadm_id"])
        return dict(zip(part["row"].astype(int), part["hadm_id"].astype(int), strict=True))

    def candidates(self, split: str) -> CandidateSets:
        """A split's candidate sets; checks every query has K candidates and one true one."""
        path = self.candidates_path
        try:
            table = pd.read_parquet(
                path, columns=["split", "query_row", "position", "candidate_row", "is_true"]
            )
        except FileNotFoundError as error:
            raise DatasetError(path, "missing") from error
        except (OSError, ValueError) as error:
            raise DatasetError(path, f"unreadable: {error}") from error
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
