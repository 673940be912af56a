"""A miniature Symile-MIMIC release, written the way the reference scripts write it.

Layout, names and dtypes as in github.com/rajesh-lab/symile experiments/: split CSVs
(create_dataset_splits.py: lab columns by itemid and <itemid>_percentile, the right-
continuous ECDF of train, labs_means.json of the train mean percentiles, each query
followed by K-1 sampled negatives with label_hadm_id), data_npy/<split>/ tensors
(process_and_save_tensors: CXR grey -> RGB -> ImageNet-normalised float32 [n, 3, 320, 320];
ECG min-max over the record to [-1, 1], float32 [n, 1, 5000, 12] in MIMIC-IV-ECG's lead
order; percentiles float32 [n, 50] missing = labs_means; missingness int64 1 = observed;
hadm_id, label, label_hadm_id int64), and a Lightning-style checkpoint of the reference
architecture whose module tree is written out here independently of models/.

Nothing here imports the code under test: the reference model and its zero-shot retrieval
are reimplemented below so that the import, the model and the evaluation are checked
against an independent version.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision.models import resnet

# experiments/constants.py LABS, in its order (the tensors sort them by itemid).
REFERENCE_LABS = [
    "51221",
    "51265",
    "50912",
    "50971",
    "51222",
    "51301",
    "51249",
    "51279",
    "51250",
    "51248",
    "51277",
    "51006",
    "50983",
    "50902",
    "50882",
    "50868",
    "50931",
    "50960",
    "50893",
    "50970",
    "51237",
    "51274",
    "51275",
    "51146",
    "51256",
    "51254",
    "51200",
    "51244",
    "52172",
    "50934",
    "51678",
    "50947",
    "50861",
    "50878",
    "50813",
    "50863",
    "50885",
    "50820",
    "50862",
    "50802",
    "50821",
    "50804",
    "50818",
    "52075",
    "52073",
    "52074",
    "52069",
    "51133",
    "50910",
    "52135",
]
MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CHEXPERT_KEPT = ("Atelectasis", "Cardiomegaly", "Edema", "Lung Opacity", "No Finding")
CHEXPERT_KEPT += ("Pleural Effusion",)


@dataclass
class MiniRelease:
    """Paths and the raw truth behind a written miniature release."""

    root: Path
    checkpoint: Path
    cohort: pd.DataFrame  # symile_mimic_data.csv as written
    ecg_mv: dict[int, np.ndarray]  # hadm_id -> float64 [5000, 12] mV, MIMIC lead order
    grey: dict[int, np.ndarray]  # hadm_id -> uint8 [320, 320]
    k: int


# ---------------------------------------------------------------------------------------
# The reference architecture (experiments/models/symile_mimic_model.py), module by module.


class RefCXR(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.resnet = resnet.resnet50(weights=None)
        self.resnet.fc = nn.Linear(2048, d, bias=True)
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.resnet(x))


class RefECG(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.resnet = resnet.resnet18(weights=None)
        self.resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.resnet.fc = nn.Linear(512, d, bias=True)
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.resnet(x))


class RefLabs(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(100, 256)
        self.fc2 = nn.Linear(256, 1024)
        self.fc3 = nn.Linear(1024, d)
        self.gelu = nn.GELU()
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.fc3(self.gelu(self.fc2(self.gelu(self.fc1(x))))))


class RefModel(nn.Module):
    def __init__(self, d: int, logit_scale_init: float) -> None:
        super().__init__()
        self.ecg_encoder = RefECG(d)
        self.cxr_encoder = RefCXR(d)
        self.labs_encoder = RefLabs(d)
        self.logit_scale = nn.Parameter(torch.ones([]) * logit_scale_init)


class Payload:
    """An object whose unpickling would run a command: what a safe reader must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def lightning_checkpoint(
    model: nn.Module, hyper: dict, extra: dict | None = None, adam_state: bool = False
) -> dict:
    """A dict shaped like a Lightning 2.x checkpoint (with AdamW's moments when asked: the
    published checkpoint's size is three times its weights')."""
    state = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    names = list(state)
    moments = {}
    if adam_state:
        for i, p in enumerate(model.parameters()):
            moments[i] = {
                "step": torch.tensor(1512.0),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }
    return {
        "epoch": 41,
        "global_step": 1512,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 42}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max'}": {
                "monitor": "val_acc",
                "best_model_score": torch.tensor(0.31),
                "best_model_path": "/ckpts/epoch=41-val_acc=0.31.ckpt",
                "dirpath": "/ckpts",
            }
        },
        "optimizer_states": [
            {
                "state": moments,
                "param_groups": [
                    {"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.01, "params": names[:3]}
                ],
            }
        ],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hyper,
        **(extra or {}),
    }


def reference_hyper_parameters(d: int) -> dict:
    """hyper_parameters as main.py's parsed args hold them: paths and a Namespace inside."""
    return {
        "d": d,
        "loss_fn": "symile",
        "negative_sampling": "n_squared",
        "logit_scale_init": -7.0,
        "freeze_logit_scale": False,
        "pretrained": True,
        "lr": 1e-4,
        "batch_sz_val": 4,
        "batch_sz_test": 4,
        "data_dir": pathlib.PosixPath("/data/symile-mimic"),
        "ckpt_save_dir": pathlib.PosixPath("/ckpts"),
        "save_dir": pathlib.PurePosixPath("/results"),
        "experiment": "symile_mimic",
        "args": argparse.Namespace(d=d, data_dir=pathlib.PosixPath("/data"), seed=0),
    }


# ---------------------------------------------------------------------------------------
# The release.


def _ecdf_right(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """statsmodels-style NaN-aware ECDF, side='right': #(train <= x) / n_observed."""
    observed = np.sort(train[~np.isnan(train)])
    out = np.searchsorted(observed, x, side="right") / len(observed)
    return np.where(np.isnan(x), np.nan, out)


def _with_negatives(frame: pd.DataFrame, k: int, rng: np.random.Generator) -> pd.DataFrame:
    """create_dataset_splits.sample_negative_candidates: queries first, then K-1 others each."""
    frame = frame.copy()
    frame["label_hadm_id"] = frame["hadm_id"]
    frame["label"] = 1
    parts = [frame]
    for i in range(len(frame)):
        others = frame.drop(frame.index[i])
        chosen = others.iloc[rng.choice(len(others), size=k - 1, replace=False)].copy()
        chosen["label_hadm_id"] = frame.iloc[i]["hadm_id"]
        chosen["label"] = 0
        parts.append(chosen)
    return pd.concat(parts, ignore_index=True)


def write_release(
    root: Path,
    n_train: int = 16,
    n_val: int = 6,
    n_test: int = 7,
    k: int = 5,
    d: int = 16,
    seed: int = 0,
    pt_split: str | None = "val",
    payload_marker: Path | None = None,
    adam_state: bool = False,
) -> MiniRelease:
    """Write a miniature release under `root` (tensors of `pt_split` as .pt, the rest .npy)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    split_of = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    # Patients are disjoint across splits; a train patient has two admissions.
    subjects, next_subject = [], 10_000_032
    for i, split in enumerate(split_of):
        if split == "train" and i % 4 == 1:
            subjects.append(subjects[-1])
        else:
            subjects.append(next_subject)
            next_subject += 7
    hadm = 20_000_000 + np.arange(n) * 13
    admit = pd.Timestamp("2180-03-01 08:00") + pd.to_timedelta(np.arange(n) * 37, unit="h")
    ecg_study = 40_000_000 + np.arange(n) * 3
    cxr_study = 50_000_000 + np.arange(n) * 5
    dicom = [f"{rng.integers(16**8):08x}-{i:04x}-aa{i:02d}" for i in range(n)]
    rows = []
    for i in range(n):
        s = subjects[i]
        rows.append(
            {
                "subject_id": s,
                "hadm_id": int(hadm[i]),
                "admittime": admit[i],
                "cxr_dicom_id": dicom[i],
                "cxr_study_id": int(cxr_study[i]),
                "cxr_StudyDateTime": admit[i] + pd.Timedelta(hours=30),
                "cxr_path": f"files/p{str(s)[:2]}/p{s}/s{cxr_study[i]}/{dicom[i]}.jpg",
                "ecg_study_id": int(ecg_study[i]),
                "ecg_time": admit[i] + pd.Timedelta(hours=1),
                "ecg_path": f"files/p{str(s)[:4]}/p{s}/s{ecg_study[i]}/{ecg_study[i]}",
                **{c: float(rng.integers(0, 2)) for c in CHEXPERT_KEPT},
            }
        )
    cohort = pd.DataFrame(rows)
    raw = rng.lognormal(1.0, 0.6, size=(n, len(REFERENCE_LABS))).round(1)
    raw[rng.random(raw.shape) < 0.4] = np.nan
    raw[np.isnan(raw).all(axis=1), 0] = 4.2  # every admission has at least one lab
    for j, itemid in enumerate(REFERENCE_LABS):
        cohort[itemid] = raw[:, j]
    root.mkdir(parents=True, exist_ok=True)
    cohort.to_csv(root / "symile_mimic_data.csv", index=False)

    base = cohort.drop(columns=["admittime", "cxr_dicom_id", "cxr_study_id"])
    base = base.drop(columns=["cxr_StudyDateTime", "ecg_study_id", "ecg_time"])
    splits = {
        s: base[np.array(split_of) == s].reset_index(drop=True) for s in ("train", "val", "test")
    }
    for name, frame in splits.items():
        percentile_columns = {
            f"{i}_percentile": _ecdf_right(
                splits["train"][i].to_numpy(np.float64), frame[i].to_numpy()
            )
            for i in REFERENCE_LABS
        }
        splits[name] = pd.concat([frame, pd.DataFrame(percentile_columns)], axis=1)
    means = {
        f"{i}_percentile": float(splits["train"][f"{i}_percentile"].mean()) for i in REFERENCE_LABS
    }
    (root / "labs_means.json").write_text(json.dumps(means, indent=4))
    tables = {
        "train": splits["train"],
        "val": splits["val"],
        "val_retrieval": _with_negatives(splits["val"], k, rng),
        "test": _with_negatives(splits["test"], k, rng),
    }
    for name, frame in tables.items():
        frame.to_csv(root / f"{name}.csv", index=False)

    ecg_mv, grey = {}, {}
    t = np.arange(5000) / 500.0
    yy, xx = np.mgrid[0:320, 0:320]
    for i in range(n):
        beats = np.exp(-(((t + 0.05 * i) % 0.8 - 0.4) ** 2) / 0.0005)
        leads = np.stack([(j + 1) * 0.1 * beats + 0.05 * j for j in range(12)], axis=1)
        ecg_mv[int(hadm[i])] = leads + rng.normal(0, 0.01, leads.shape)  # [5000, 12] MIMIC order
        image = (
            128
            + 80 * np.sin(xx / (9 + i)) * np.cos(yy / (13 + 2 * i))
            + rng.normal(0, 6, (320, 320))
        )
        grey[int(hadm[i])] = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    sorted_labs = sorted(means)  # the tensors' lab order
    for name, frame in tables.items():
        folder = root / "data_npy" / name
        folder.mkdir(parents=True, exist_ok=True)
        ids = frame["hadm_id"].to_numpy(np.int64)
        shapes = {"cxr": (len(frame), 3, 320, 320), "ecg": (len(frame), 1, 5000, 12)}
        if name == pt_split:
            cxr, ecg = (np.empty(shapes[key], np.float32) for key in ("cxr", "ecg"))
        else:  # written in place, so a release of gigabytes needs no memory for it
            cxr, ecg = (
                np.lib.format.open_memmap(
                    folder / f"{key}_{name}.npy", mode="w+", dtype=np.float32, shape=shapes[key]
                )
                for key in ("cxr", "ecg")
            )
        for r, h in enumerate(ids):
            rgb = np.repeat(grey[int(h)][None].astype(np.float32) / 255.0, 3, axis=0)
            cxr[r] = (rgb - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
            signal = ecg_mv[int(h)]
            ecg[r, 0] = 2 * (signal - signal.min()) / (signal.max() - signal.min()) - 1
        percentiles = np.empty((len(frame), 50), np.float32)
        missingness = np.empty((len(frame), 50), np.int64)
        for j, key in enumerate(sorted_labs):
            value = frame[key.removesuffix("_percentile")]
            missingness[:, j] = value.notna().to_numpy()
            percentiles[:, j] = np.where(value.notna(), frame[key], means[key])
        tensors = {
            "cxr": cxr,
            "ecg": ecg,
            "labs_percentiles": percentiles,
            "labs_missingness": missingness,
            "hadm_id": ids,
        }
        if name in ("val_retrieval", "test"):
            tensors["label_hadm_id"] = frame["label_hadm_id"].to_numpy(np.int64)
            tensors["label"] = frame["label"].to_numpy(np.int64)
        for key, value in tensors.items():
            if key in shapes and name != pt_split:
                value.flush()
            elif name == pt_split:
                torch.save(torch.from_numpy(value.copy()), folder / f"{key}_{name}.pt")
            else:
                np.save(folder / f"{key}_{name}.npy", value)

    torch.manual_seed(seed)
    model = RefModel(d, -7.0)
    with torch.no_grad():  # a LayerNorm affine that is not the identity, a scale not at init
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        model.logit_scale.fill_(-1.5)
    hyper = reference_hyper_parameters(d)
    checkpoint = root / "symile_mimic_model.ckpt"
    torch.save(lightning_checkpoint(model, hyper, adam_state=adam_state), checkpoint)
    if payload_marker is not None:
        evil = {**hyper, "callback": Payload(payload_marker)}
        # The payload is refused before any tensor is read: the labs encoder's suffice.
        torch.save(lightning_checkpoint(model.labs_encoder, evil), root / "payload.ckpt")
    return MiniRelease(root, checkpoint, cohort, ecg_mv, grey, k)


def release_without_column(source: Path, target: Path, csv_name: str, column: str) -> Path:
    """A copy of the release at `source` whose CSV `csv_name` lacks `column`: its tables are
    copied (the one rewritten without the column), its tensors linked, its checkpoint kept."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name == "data_npy":
            (target / path.name).symlink_to(path.resolve(), target_is_directory=True)
        elif path.suffix in (".csv", ".json"):
            shutil.copyfile(path, target / path.name)
        elif path.suffix == ".ckpt":
            (target / path.name).symlink_to(path.resolve())
    table = pd.read_csv(target / csv_name, low_memory=False)
    assert column in table.columns, (csv_name, column)
    table.drop(columns=[column]).to_csv(target / csv_name, index=False)
    return target


# ---------------------------------------------------------------------------------------
# The reference's zero-shot retrieval, on the release's own tensors.


@torch.no_grad()
def reference_retrieval(root: Path, split: str, d: int = 16) -> dict[int, list[float]]:
    """{query hadm_id: candidate logits, true first}: symile_mimic_model.zeroshot_retrieval's
    scores (exp(logit_scale) * MIP(r_e, r_l, r_c)) for each query of a retrieval split."""
    safe = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath]
    with torch.serialization.safe_globals(safe):
        raw = torch.load(root / "symile_mimic_model.ckpt", weights_only=True)
    model = RefModel(d, 0.0)
    model.load_state_dict(raw["state_dict"], strict=True)
    model.eval()
    folder = root / "data_npy" / split

    def load(name: str) -> torch.Tensor:
        npy = folder / f"{name}_{split}.npy"
        if npy.exists():
            return torch.from_numpy(np.load(npy))
        return torch.load(folder / f"{name}_{split}.pt", weights_only=True)

    r_c = model.cxr_encoder(load("cxr"))
    r_e = model.ecg_encoder(load("ecg"))
    labs = torch.cat([load("labs_percentiles"), load("labs_missingness")], dim=1).float()
    r_l = model.labs_encoder(labs)
    hadm, label_hadm, label = load("hadm_id"), load("label_hadm_id"), load("label")
    out = {}
    for q in torch.nonzero(label == 1).flatten().tolist():
        negatives = (label_hadm == hadm[q]) & (label == 0)
        candidates = torch.cat([r_c[q : q + 1], r_c[negatives]], dim=0)
        logits = model.logit_scale.exp() * ((r_e[q] * r_l[q])[None] @ candidates.T)
        out[int(hadm[q])] = logits[0].tolist()
    return out


def reference_accuracy(logits: dict[int, list[float]], seed: int = 0) -> float:
    """The reference's top-1: argmax over the candidates, ties broken at random."""
    rng = np.random.default_rng(seed)
    correct = 0
    for scores in logits.values():
        values = np.asarray(scores)
        best = np.flatnonzero(values == values.max())
        correct += int(best[rng.integers(len(best))] == 0)
    return correct / len(logits)
