"""Pretrained encoders for the synthetic cohorts, and what they change (docs/diagnosis.md).

    # encoders trained on a separate labelled cohort's marker bits -> a weights file
    OMP_NUM_THREADS=1 python benchmarks/warm_start.py pretrain --cohort E --seed 0 --out W.pt
    # Symile and CLIP (presets demo, demo-clip) started from it, measured on VALIDATION
    OMP_NUM_THREADS=1 python benchmarks/warm_start.py compare --cohorts C --weights W.pt \
        --seeds 0,1 --out D
    # the study with both objectives started from it (test split, once per run)
    symile-clinical study --encoder-weights W.pt ...

`pretrain --method supervised` is `symile-clinical pretrain` (symile_clinical/training/pretrain.py)
on cohort E with its marker findings as labels (benchmarks/oracle_labels.py, written
beside the weights as W.csv): each encoder of preset `demo`'s model learns its own
modality's findings on E's train split. `--method ssl` uses no labels: two augmented views
of each admission told apart from the batch's others. Either writes the encoders' state
dict, which `symile-clinical train --encoder-weights` and `study --encoder-weights` load.
E is a cohort of its own (another synth seed): it plays
the part of the labelled data a pretrained ECG or CXR encoder of real data was trained on,
and the cohorts the encoders are then used on never lend their labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.oracle_labels import write_finding_labels
from benchmarks.recipe_search import N_MARKERS, probes, ridge_probe, truth_for
from models.symile_model import build_model
from symile_clinical.experiments.study_cells import (
    measure_embeddings,
    run_summary,
    split_embeddings,
)
from symile_clinical.formats.dataset_dir import DatasetDir
from symile_clinical.formats.run_config import Augmentation
from symile_clinical.formats.run_dir import RunDir
from symile_clinical.training.augment import augment, drop_labs
from symile_clinical.training.config import load_config
from symile_clinical.training.pretrain import batch_inputs, encode, pretrain_encoders
from symile_clinical.training.trainer import fit_model_to_data, train

log = logging.getLogger("warm_start")
ENCODERS = {
    "ecg": ("ecg_encoder", "ecg_bit_{k}"),
    "labs": ("labs_encoder", "lab_bit_{k}"),
    "cxr": ("cxr_encoder", "cxr_bit_{k}"),
}


SSL_VIEWS = Augmentation(500, 0.1, 4, ecg_noise=0.05, cxr_noise=0.05, cxr_gain=0.2, lab_noise=0.1)


def pretrain_ssl(
    cohort: Path, config: Any, seed: int, epochs: int
) -> tuple[dict, dict[str, float]]:
    """Encoder weights trained without labels: per modality, two augmented views of each
    admission told apart from the batch's other admissions (symmetric InfoNCE, temperature
    0.1, a 2-layer head), lab dropout 0.2 in each view; and the val accuracy of a ridge probe
    of each modality's bits on the encoder outputs (fitted on train)."""
    dataset = DatasetDir(cohort / "dataset")
    train = dataset.split("train")
    fill = torch.from_numpy(dataset.fill_values)
    model = build_model(config.model, seed=seed)
    d = config.model.embed_dim
    heads = nn.ModuleDict(
        {m: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)) for m in ENCODERS}
    )
    params = [p for m, (name, _) in ENCODERS.items() for p in getattr(model, name).parameters()]
    optimizer = torch.optim.AdamW(params + list(heads.parameters()), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    target = torch.arange(64)
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=generator).numpy()
        for start in range(0, len(order) - 63, 64):
            x = batch_inputs(train, np.sort(order[start : start + 64]))
            views = []
            for _view in range(2):
                labs, observed = drop_labs(x["labs"], x["labs_observed"], fill, 0.2, generator)
                views.append(
                    augment({**x, "labs": labs, "labs_observed": observed}, SSL_VIEWS, generator)
                )
            loss = 0.0
            for m in ENCODERS:
                z1, z2 = (F.normalize(heads[m](encode(model, m, v)), dim=-1) for v in views)
                logits = z1 @ z2.T / 0.1
                loss = (
                    loss + (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    truth = {s: truth_for(cohort, s) for s in ("train", "val")}
    accuracy = {}
    with torch.no_grad():
        feats = {
            s: {
                m: encode(
                    model, m, batch_inputs(dataset.split(s), np.arange(len(dataset.split(s))))
                ).numpy()
                for m in ENCODERS
            }
            for s in truth
        }
    for m, (_, column) in ENCODERS.items():
        accuracy[m] = float(
            np.mean(
                [
                    ridge_probe(
                        feats["train"][m],
                        truth["train"][column.format(k=k)],
                        feats["val"][m],
                        truth["val"][column.format(k=k)],
                    )
                    for k in range(N_MARKERS)
                ]
            )
        )
    weights = {
        k: v
        for k, v in model.state_dict().items()
        if k.split(".")[0] in {n for n, _ in ENCODERS.values()}
    }
    return weights, accuracy


def compare_one(cohort: Path, preset: str, seed: int, weights: Path, out: Path) -> dict:
    """Train (or reuse) preset on the cohort with its encoders started from `weights`, and
    measure it on val."""
    dataset = DatasetDir(cohort / "dataset")
    run = RunDir(out / cohort.name / preset / f"s{seed}")
    result_path = run.path / "warm_start.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    config = dataclasses.replace(
        load_config(preset), seed=seed, device="cpu", encoder_weights=str(weights)
    )
    if not run_summary(run):
        train(config, dataset, run, resume=run.has_checkpoint(), progress=False)
    val, masked, objective = split_embeddings(run, dataset, "val")
    train_embs, _, _ = split_embeddings(run, dataset, "train")
    summary = measure_embeddings(val, masked, objective, dataset, "val", seed).summary()
    probe = probes(train_embs, val, objective, truth_for(cohort, "train"), truth_for(cohort, "val"))
    row = {"cohort": cohort.name, "seed": seed, "preset": preset, **summary}
    row["q"] = probe["query_cxr_bits"]
    result_path.write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    pre = sub.add_parser("pretrain", help="encoders from a labelled cohort -> a weights file")
    pre.add_argument("--cohort", required=True, help="the labelled cohort (mimic/ + dataset/)")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--epochs", type=int, default=20)
    pre.add_argument("--method", choices=("supervised", "ssl"), default="supervised")
    pre.add_argument("--out", required=True, help="the weights file to write")
    cmp = sub.add_parser("compare", help="Symile and CLIP from the weights, on val")
    cmp.add_argument("--cohorts", required=True, help="comma-separated cohort folders")
    cmp.add_argument("--weights", required=True)
    cmp.add_argument("--seeds", default="0,1")
    cmp.add_argument("--out", default="warm-start")
    cmp.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    if args.mode == "pretrain":
        cohort = Path(args.cohort)
        config = fit_model_to_data(
            dataclasses.replace(load_config("demo"), seed=args.seed),
            DatasetDir(cohort / "dataset").split("train"),
        )
        if args.method == "supervised":  # the product's pretraining, on the truth's findings
            labels = write_finding_labels(cohort / "mimic", Path(args.out).with_suffix(".csv"))
            accuracy = pretrain_encoders(
                dataclasses.replace(load_config("demo"), seed=args.seed),
                DatasetDir(cohort / "dataset"),
                labels,
                Path(args.out),
                epochs=args.epochs,
                progress=False,
                label_source="ORACLE labels: the generator's hidden marker bits (synth_truth)",
            )
        else:
            weights, accuracy = pretrain_ssl(cohort, config, args.seed, args.epochs)
            torch.save(weights, args.out)
        print(
            f"{args.out}: {args.method} encoders; {cohort.name} val bit accuracy "
            + " ".join(f"{m} {a:.2f}" for m, a in accuracy.items()),
            flush=True,
        )
    else:
        tasks = [
            (Path(c), preset, int(s), Path(args.weights).resolve(), Path(args.out))
            for c in args.cohorts.split(",")
            for s in args.seeds.split(",")
            for preset in ("demo", "demo-clip")
        ]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            for row in pool.map(_compare, tasks):
                print(json.dumps(row), flush=True)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)


def _compare(task: tuple) -> dict:
    torch.set_num_threads(1)
    return compare_one(*task)


if __name__ == "__main__":
    main()
