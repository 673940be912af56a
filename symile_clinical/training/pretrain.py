"""Supervised pretraining of the three encoders on per-modality findings, before Symile or CLIP.

Symile can use what ECG and labs show only together once each encoder sees its own
modality's findings; from a couple of thousand admissions and no labels it does not come to
see them (docs/diagnosis.md, round 3). Pretrained encoders are how that is met on real data
(a CXR network trained on labelled radiographs, an ECG network on machine statements). This
module makes them from labels the user has: each encoder gets a linear head and is trained,
with a masked binary cross-entropy, to predict its own modality's findings on the TRAIN
split; the encoders' weights are then a file that `train --encoder-weights` starts from.

A labels file is a CSV with `hadm_id` and one column per finding named `<modality>:<name>`,
modality `ecg`, `labs` or `cxr` (for example `ecg:first_degree_av_block`, `labs:high_mg`,
`cxr:nodule_rul`), values 1, 0 or empty (unknown, left out of the loss). Admissions without a
row are unknown throughout. The val split's accuracy per modality is reported; the test split
is never read.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.symile_model import build_model
from models.weights import ENCODERS
from symile_clinical.errors import SymileClinicalError
from symile_clinical.formats.atomic import atomic_path, write_json_atomic
from symile_clinical.formats.checkpoint import file_sha256, provenance_path
from symile_clinical.formats.dataset_dir import DatasetDir, SplitArrays, cxr_to_unit
from symile_clinical.formats.run_config import TrainConfig
from symile_clinical.training.config import fit_model_to_data

log = logging.getLogger(__name__)

MODALITIES = ("ecg", "labs", "cxr")  # in the order of models.weights.ENCODERS


class LabelsError(SymileClinicalError):
    """A labels file that cannot be used for pretraining."""


@dataclass(frozen=True)
class FindingLabels:
    """Per-modality finding labels of a split's rows: float32 [N, K] with NaN = unknown."""

    names: dict[str, list[str]]
    values: dict[str, np.ndarray]


def read_labels(path: Path, dataset: DatasetDir, split: str) -> FindingLabels:
    """The labels file's findings for the rows of one split (NaN where unknown)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        with path.open(newline="") as handle:  # pandas renames a repeated column: look first
            header = next(csv.reader(handle), [])
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise LabelsError(path, f"cannot read CSV: {error}") from error
    if "hadm_id" not in table.columns:
        raise LabelsError(path, "has no hadm_id column")
    if header and len(set(header)) != len(header):
        raise LabelsError(path, "repeats a column name")
    names: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for column in table.columns.drop("hadm_id"):
        modality, _, name = str(column).partition(":")
        if modality not in names or not name:
            raise LabelsError(path, f"column {column!r} is not <ecg|labs|cxr>:<finding>")
        names[modality].append(name)
    if not any(names.values()):
        raise LabelsError(path, "has no finding columns")
    hadm = pd.to_numeric(table["hadm_id"], errors="coerce")
    if hadm.isna().any() or (hadm % 1 != 0).any():
        raise LabelsError(path, "has an hadm_id that is not a whole number")
    hadm = hadm.astype("int64")
    if hadm.duplicated().any():
        raise LabelsError(path, "repeats an hadm_id")
    given = table.drop(columns="hadm_id")
    findings = given.apply(pd.to_numeric, errors="coerce")
    if not (findings.isin([0, 1]) | given.isna()).all().all():
        raise LabelsError(path, "has values other than 0, 1 or empty")
    rows = dataset.hadm_ids(split)
    if sorted(rows) != list(range(len(dataset.split(split)))):
        raise LabelsError(dataset.manifest_path, f"does not give an hadm_id for every {split} row")
    order = pd.Series(rows).sort_index().to_numpy()
    if not np.isin(order, hadm.to_numpy()).any():
        raise LabelsError(path, f"labels none of the {split} split's admissions")
    aligned = findings.set_axis(hadm.to_numpy()).reindex(order)
    values = {
        m: aligned[[f"{m}:{n}" for n in names[m]]].to_numpy(dtype=np.float32)
        for m in MODALITIES
        if names[m]
    }
    return FindingLabels({m: n for m, n in names.items() if n}, values)


def batch_inputs(
    arrays: SplitArrays, rows: np.ndarray, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """The model inputs of a split's rows (sorted row numbers), as float32 tensors."""
    return {
        "ecg": torch.from_numpy(np.asarray(arrays.ecg[rows], dtype=np.float32)).to(device),
        "cxr": torch.from_numpy(cxr_to_unit(arrays.cxr[rows])).to(device),
        "labs": torch.from_numpy(np.asarray(arrays.labs[rows], dtype=np.float32)).to(device),
        "labs_observed": torch.from_numpy(
            np.asarray(arrays.labs_observed[rows], dtype=np.float32)
        ).to(device),
    }


def encode(model: nn.Module, modality: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One modality's encoder output (before the projection) for a batch."""
    if modality == "ecg":
        return model.ecg_encoder(batch["ecg"])
    if modality == "labs":
        return model.labs_encoder(batch["labs"], batch["labs_observed"])
    return model.cxr_encoder(batch["cxr"])


def _masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    known = ~torch.isnan(target)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], target[known])


def pretrain_encoders(
    config: TrainConfig,
    dataset: DatasetDir,
    labels_path: Path,
    out: Path,
    epochs: int = 20,
    device: str = "cpu",
    progress: bool = True,
    label_source: str = "a labels file",
) -> dict[str, float]:
    """Train the encoders of `config.model` (fitted to the dataset) on the labels' findings
    (train split; AdamW as `config`, batch `config.batch_size`), write their weights to `out`
    and return the val accuracy of each modality's findings (mean over findings, known only)."""
    config = fit_model_to_data(config, dataset.split("train"))
    train_labels = read_labels(labels_path, dataset, "train")
    val_labels = read_labels(labels_path, dataset, "val")
    target = torch.device(device)
    model = build_model(config.model, seed=config.seed).to(target)
    d = config.model.embed_dim
    heads = nn.ModuleDict({m: nn.Linear(d, len(n)) for m, n in train_labels.names.items()}).to(
        target
    )
    encoders = [getattr(model, ENCODERS[MODALITIES.index(m)]) for m in heads]
    params = [p for e in encoders for p in e.parameters()] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    train = dataset.split("train")
    batch = min(config.batch_size, len(train))
    steps = epochs * (len(train) // batch)
    model.train()
    bar = tqdm(total=steps, desc="pretrain", unit="step", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator).numpy()
        for start in range(0, len(order) - batch + 1, batch):
            rows = np.sort(order[start : start + batch])
            inputs = batch_inputs(train, rows, target)
            loss = sum(
                _masked_bce(
                    heads[m](encode(model, m, inputs)),
                    torch.from_numpy(train_labels.values[m][rows]).to(target),
                )
                for m in heads
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    accuracy = _accuracy(model, heads, dataset.split("val"), val_labels, target)
    weights = {
        key: value.cpu()
        for key, value in model.state_dict().items()
        if key.split(".")[0] in {ENCODERS[MODALITIES.index(m)] for m in heads}
    }
    with atomic_path(out) as temporary:
        torch.save(weights, temporary)
    # Beside the weights, what they learnt from: reports of runs started from them say it.
    provenance = {
        "label_source": label_source,
        "labels": Path(labels_path).name,
        "labels_sha256": file_sha256(labels_path),
        "findings": {m: list(n) for m, n in train_labels.names.items()},
        "epochs": epochs,
        "val_accuracy": accuracy,
    }
    write_json_atomic(provenance_path(out), provenance)
    log.info("pretrained %s into %s; val accuracy %s", ", ".join(heads), out, accuracy)
    return accuracy


@torch.no_grad()
def _accuracy(
    model: nn.Module,
    heads: nn.ModuleDict,
    arrays: SplitArrays,
    labels: FindingLabels,
    device: torch.device,
) -> dict[str, float]:
    model.eval()
    hits = {m: [] for m in heads}
    for start in range(0, len(arrays), 128):
        rows = np.arange(start, min(start + 128, len(arrays)))
        inputs = batch_inputs(arrays, rows, device)
        for m in heads:
            guess = (heads[m](encode(model, m, inputs)) > 0).float().cpu().numpy()
            truth = labels.values[m][rows]
            known = ~np.isnan(truth)
            hits[m].append((guess[known] == truth[known]).astype(float))
    return {
        m: float(np.concatenate(h).mean()) if sum(len(x) for x in h) else float("nan")
        for m, h in hits.items()
    }
