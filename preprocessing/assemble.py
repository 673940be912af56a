"""The assembly stage: committed shards and fitted labs into the dataset directory.

Writes, through `DatasetDir`'s names (docs/formats.md): each split's memmapped arrays
(ecg, cxr copied out of the shards in chunks; labs, labs_observed), manifest.parquet,
candidates.parquet, quarantine.csv, preprocess_report.json, and dataset.json last (its
presence means the dataset is complete). Every file is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from preprocessing import layout
from preprocessing.decode import ShardTask, shard_array
from preprocessing.quarantine import write_quarantine
from symile_clinical.formats.atomic import atomic_path, remove_stale_temporaries, write_text_atomic
from symile_clinical.formats.dataset_dir import SPLITS, DatasetDir

ARRAY_CHUNK_ROWS = 256  # rows copied at a time when assembling a split's arrays


def remove_stale_dataset_temporaries(dataset: DatasetDir) -> None:
    """Remove the hidden temporary files a killed run left beside the dataset's files."""
    for folder in (dataset.path, *(dataset.split_dir(split) for split in SPLITS)):
        remove_stale_temporaries(folder)


def write_split_arrays(
    dataset: DatasetDir,
    tasks: Sequence[ShardTask],
    survived: np.ndarray,
    split_of: np.ndarray,
    percentiles: np.ndarray,
    observed: np.ndarray,
    cxr_size: int,
) -> dict[str, int]:
    """Write each split's ecg, cxr, labs and labs_observed arrays; returns the split sizes.

    survived: bool [N] over the shards' rows; split_of, percentiles [M, L] and observed
    [M, L] over the M survivors.
    """
    shard_of_row = np.repeat(np.arange(len(tasks)), [len(t) for t in tasks])[survived]
    offsets = [np.arange(len(t), dtype=np.int64) for t in tasks]
    offset_of_row = (np.concatenate(offsets) if offsets else np.zeros(0, np.int64))[survived]
    sizes = {}
    for split in SPLITS:
        members = np.flatnonzero(split_of == split)
        sizes[split] = int(members.size)
        dataset.split_dir(split).mkdir(exist_ok=True)
        shards, rows = shard_of_row[members], offset_of_row[members]
        n = int(members.size)
        _write_array(
            dataset.array_path(split, "ecg"),
            (n, 12, layout.ECG_SAMPLES),
            np.float16,
            _copy_from_shards(tasks, "ecg", shards, rows),
        )
        _write_array(
            dataset.array_path(split, "cxr"),
            (n, 1, cxr_size, cxr_size),
            np.uint8,
            _copy_from_shards(tasks, "cxr", shards, rows),
        )
        for name, values in (
            ("labs", percentiles[members].astype(np.float32)),
            ("labs_observed", observed[members].astype(np.uint8)),
        ):
            _write_array(dataset.array_path(split, name), values.shape, values.dtype, values)
    return sizes


def _copy_from_shards(
    tasks: Sequence[ShardTask], name: str, shard_of_row: np.ndarray, offset_of_row: np.ndarray
) -> Callable[[np.ndarray], None]:
    """A filler that copies rows (shard, offset) of the shards' `name` array, in chunks."""

    def fill(array: np.ndarray) -> None:
        start = 0
        for shard in np.unique(shard_of_row):
            rows = offset_of_row[shard_of_row == shard]
            source = shard_array(tasks[shard], name)
            for chunk in range(0, rows.size, ARRAY_CHUNK_ROWS):
                part = rows[chunk : chunk + ARRAY_CHUNK_ROWS]
                array[start : start + part.size] = source[part]
                start += part.size

    return fill


def _write_array(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    content: np.ndarray | Callable[[np.ndarray], None],
) -> None:
    """Write an .npy atomically: `content` is the array, or fills the memmap row by row."""
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        if callable(content):
            content(array)
        else:
            array[...] = content
        array.flush()
        del array


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a table as parquet, atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def manifest_frame(
    included: pd.DataFrame, split_of: np.ndarray, observed: np.ndarray
) -> pd.DataFrame:
    """manifest.parquet: the included admissions split by split (train, val, test)."""
    return pd.concat(
        [_split_manifest(included.loc[split_of == s], s, observed[split_of == s]) for s in SPLITS],
        ignore_index=True,
    )


def _split_manifest(rows: pd.DataFrame, split: str, observed: np.ndarray) -> pd.DataFrame:
    """manifest.parquet rows of one split, in the columns and dtypes of docs/formats.md."""
    return pd.DataFrame(
        {
            "split": pd.Series([split] * len(rows), dtype=object),
            "row": np.arange(len(rows), dtype=np.int64),
            "subject_id": rows["subject_id"].to_numpy(dtype=np.int64),
            "hadm_id": rows["hadm_id"].to_numpy(dtype=np.int64),
            "ecg_study_id": rows["ecg_study_id"].to_numpy(dtype=np.int64),
            "ecg_path": rows["ecg_path"].astype(str).to_numpy(dtype=object),
            "ecg_time": rows["ecg_time"].to_numpy(dtype="datetime64[ns]"),
            "dicom_id": rows["dicom_id"].astype(str).to_numpy(dtype=object),
            "cxr_study_id": rows["cxr_study_id"].to_numpy(dtype=np.int64),
            "cxr_path": rows["cxr_path"].astype(str).to_numpy(dtype=object),
            "cxr_time": rows["cxr_time"].to_numpy(dtype="datetime64[ns]"),
            "admittime": rows["admittime"].to_numpy(dtype="datetime64[ns]"),
            "n_labs_observed": observed.sum(axis=1).astype(np.int64),
        }
    )


def write_tables(
    dataset: DatasetDir, manifest: pd.DataFrame, candidates: pd.DataFrame, quarantine: pd.DataFrame
) -> None:
    """Write manifest.parquet, candidates.parquet and quarantine.csv."""
    _write_parquet(manifest, dataset.manifest_path)
    _write_parquet(candidates, dataset.candidates_path)
    write_quarantine(quarantine, dataset.quarantine_path)


def write_report(dataset: DatasetDir, report: dict[str, Any]) -> None:
    """Write preprocess_report.json."""
    write_text_atomic(dataset.report_path, json.dumps(report, indent=2))


def commit_dataset(dataset: DatasetDir, info: dict[str, Any]) -> None:
    """Write dataset.json, last: from then on the directory is a complete dataset."""
    write_text_atomic(dataset.dataset_json_path, json.dumps(info, indent=1))
