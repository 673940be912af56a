"""Small dataset directories in the docs/formats.md layout, with a planted learnable relation.

Every admission has a hidden class z in 0..n_classes-1. Its ECG carries a class-specific
offset pattern over the 12 leads, its labs a class-specific pattern of percentiles (some
labs missing), and its CXR a bright square of class-specific size at a random place. A
model that learns z from each modality retrieves the right CXR far above chance (a wrong
candidate of the same class is the only confusion). Other engineers' tests may import
`write_dataset`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from symile_clinical.formats.dataset_dir import DatasetDir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _split_arrays(
    rng: np.random.Generator,
    classes: np.ndarray,
    ecg_patterns: np.ndarray,
    lab_patterns: np.ndarray,
    fill: np.ndarray,
    ecg_samples: int,
    cxr_size: int,
    missing_rate: float,
) -> dict[str, np.ndarray]:
    n, n_labs = len(classes), lab_patterns.shape[1]
    ecg = rng.normal(0.0, 0.3, size=(n, 12, ecg_samples)).astype(np.float32)
    ecg += ecg_patterns[classes][:, :, None]
    labs = np.clip(0.5 + 0.35 * lab_patterns[classes] + rng.normal(0, 0.05, (n, n_labs)), 0, 1)
    observed = (rng.random((n, n_labs)) >= missing_rate).astype(np.uint8)
    labs = np.where(observed == 1, labs, fill[None, :]).astype(np.float32)
    cxr = rng.integers(0, 60, size=(n, 1, cxr_size, cxr_size), dtype=np.uint8)
    n_classes = len(ecg_patterns)
    for index, z in enumerate(classes):
        # A bright square at a random place whose size is the class: a CNN with global pooling
        # and per-image normalisation sees size anywhere (not position, nor overall brightness).
        side = round(cxr_size * (0.15 + 0.7 * int(z) / max(1, n_classes - 1)))
        top, left = rng.integers(0, cxr_size - side + 1, size=2)
        cxr[index, 0, top : top + side, left : left + side] += np.uint8(150)
    return {"ecg": ecg.astype(np.float16), "labs": labs, "labs_observed": observed, "cxr": cxr}


def write_dataset(
    root: Path,
    n_train: int = 96,
    n_val: int = 32,
    n_test: int = 32,
    n_labs: int = 6,
    cxr_size: int = 32,
    ecg_samples: int = 5000,
    n_candidates: int = 4,
    n_classes: int = 8,
    missing_rate: float = 0.2,
    seed: int = 0,
) -> Path:
    """Write a dataset directory under `root` (created) and return it."""
    if n_classes > 8:
        raise ValueError("the CXR grid has room for 8 classes")
    rng = np.random.default_rng(seed)
    dataset = DatasetDir(root)
    root.mkdir(parents=True, exist_ok=True)
    ecg_patterns = rng.choice([-1.0, 1.0], size=(n_classes, 12))
    lab_patterns = rng.choice([-1.0, 1.0], size=(n_classes, n_labs))
    fill = np.full(n_labs, 0.5, dtype=np.float32)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    manifest_parts, candidate_parts = [], []
    subject = 10_000_000
    for split, n in sizes.items():
        classes = rng.integers(0, n_classes, size=n)
        arrays = _split_arrays(
            rng, classes, ecg_patterns, lab_patterns, fill, ecg_samples, cxr_size, missing_rate
        )
        dataset.split_dir(split).mkdir(exist_ok=True)
        for name, array in arrays.items():
            np.save(dataset.array_path(split, name), array)
        subjects = np.arange(subject, subject + n, dtype=np.int64)
        subject += n
        time = pd.Timestamp("2150-01-01") + pd.to_timedelta(np.arange(n), unit="D")
        manifest_parts.append(
            pd.DataFrame(
                {
                    "split": split,
                    "row": np.arange(n, dtype=np.int64),
                    "subject_id": subjects,
                    "hadm_id": subjects + 10_000_000,
                    "ecg_study_id": subjects + 30_000_000,
                    "ecg_path": [f"files/p{s // 1000}/p{s}/s{s}/{s}" for s in subjects],
                    "ecg_time": time,
                    "dicom_id": [f"dicom-{s}" for s in subjects],
                    "cxr_study_id": subjects + 40_000_000,
                    "cxr_path": [f"files/p{s // 10**6}/p{s}/s{s}/dicom-{s}.dcm" for s in subjects],
                    "cxr_time": time + pd.Timedelta(hours=36),
                    "admittime": time,
                    "n_labs_observed": arrays["labs_observed"].sum(axis=1).astype(np.int64),
                }
            )
        )
        if split == "train":
            continue
        for query in range(n):
            others = rng.choice(np.delete(np.arange(n), query), n_candidates - 1, replace=False)
            rows = np.append(others, query)
            rng.shuffle(rows)
            candidate_parts.append(
                pd.DataFrame(
                    {
                        "split": split,
                        "query_row": np.int64(query),
                        "position": np.arange(n_candidates, dtype=np.int64),
                        "candidate_row": rows.astype(np.int64),
                        "is_true": rows == query,
                    }
                )
            )
    pd.concat(manifest_parts, ignore_index=True).to_parquet(dataset.manifest_path)
    pd.concat(candidate_parts, ignore_index=True).to_parquet(dataset.candidates_path)
    labs_meta = [
        {
            "itemid": 50000 + index,
            "label": f"Lab {index}",
            "fluid": "Blood",
            "unit": "mg/dL",
            "cdf_values": [float(v) for v in np.linspace(0, 10, 11)],
            "fill_percentile": float(fill[index]),
        }
        for index in range(n_labs)
    ]
    dataset_json = {
        "schema_version": 1,
        "created_by": "tests._dataset_factory",
        "seed": seed,
        "cxr_size": cxr_size,
        "ecg": {
            "sampling_hz": 500,
            "samples": ecg_samples,
            "leads": LEADS,
            "normalisation": "minmax",
        },
        "labs": labs_meta,
        "splits": sizes,
        "cohort": {
            "ecg_window_h": [-24, 24],
            "lab_window_h": [-24, 24],
            "cxr_window_h": [24, 72],
            "cxr_views": ["AP", "PA"],
        },
    }
    dataset.dataset_json_path.write_text(json.dumps(dataset_json, indent=2))
    dataset.report_path.write_text(json.dumps({"counts": {}}))
    dataset.quarantine_path.write_text("id,file,stage,reason\n")
    return root


# A model small enough to train in seconds on the datasets above; GroupNorm (not BatchNorm)
# so that its output does not depend on how the batch is split across ranks.
TINY_CONFIG_TOML = """
epochs = 3
batch_size = 16
lr = 0.003
warmup_steps = 2
checkpoint_every = 2
log_every = 1
eval_batch_size = 32
seed = 0
device = "cpu"

[model]
embed_dim = 16
projection = "l2"
ecg_channels = [4, 8]
ecg_blocks = [1, 1]
ecg_kernel_size = 5
ecg_stem_stride = 4
norm = "group"
labs_hidden = [16]
cxr_arch = "resnet_tiny"
cxr_size = 32
"""


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def write_tiny_config(
    path: Path,
    model: dict[str, object] | None = None,
    augmentation: dict[str, object] | None = None,
    **train: object,
) -> Path:
    """Write TINY_CONFIG_TOML to `path` with TrainConfig (`train`), ModelConfig (`model`) and
    Augmentation (`augmentation`, an [augmentation] table) fields overridden."""
    values = tomllib.loads(TINY_CONFIG_TOML)
    values["model"].update(model or {})
    values.update(train)
    tables = {"model": values.pop("model"), "augmentation": augmentation or {}}
    lines = [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    for table, table_values in tables.items():
        if table_values:
            lines.append(f"[{table}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in table_values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
