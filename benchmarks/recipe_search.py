"""Diagnose Symile and CLIP recipes on synthetic cohorts, and choose a recipe on validation.

    python benchmarks/recipe_search.py diagnose --cohort C --variants A,B --seeds 0,1 --out D
    python benchmarks/recipe_search.py search --cohorts C/F0_s0,C/F0.5_s0,C/F1_s0 \
        --seeds 0,1 --out D       # SEARCH_VARIANTS; prints the winner per objective

A cohort folder holds `mimic/` (from `symile-clinical synth`, with synth_truth.csv.gz) and
`dataset/` (from `symile-clinical preprocess`). Every variant is a preset plus overrides
(VARIANTS below); each (variant, seed) trains into OUT/runs/<cohort>/<variant>/s<seed>
(a finished run is reused) and is measured on the VALIDATION split only:

- top-1 full, ECG-only, labs shuffled across admissions; the labs' gain;
- linear probes (ridge, fitted on train-split embeddings, scored on val) of each marker's
  bit in its own modality (ECG bit from the ECG embedding, lab bit from the labs one, CXR
  finding from the CXR one), of the CXR finding from the query vector (Symile: e * l,
  CLIP: e + l), and of clinical states from each modality;
- embedding spread per modality and the logit-scale trajectory.

The test split is never read here. Training runs with one torch thread per process and at
most --jobs processes (default 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import LOGIT_SCALE_INIT

log = logging.getLogger("recipe_search")

N_MARKERS = 4
STATES = ("pneumonia", "hf_exacerbation", "paced", "atrial_fibrillation")

# name -> (preset, TrainConfig overrides, ModelConfig overrides); a preset of None keeps the
# preset the variants before it in "a+b" chose.
VARIANTS: dict[str, tuple[str | None, dict[str, Any], dict[str, Any]]] = {
    "symile-demo": ("search-base", {"objective": "symile"}, {}),
    "clip-demo": ("search-base", {"objective": "clip"}, {}),
    "symile": ("search-base", {"objective": "symile"}, {}),
    "clip": ("search-base", {"objective": "clip"}, {}),
    # Cheaper encoders: ECG stem stride 8 with (8..64) channels, CXR resnet_tiny.
    "fast": (
        "search-base",
        {},
        {"ecg_channels": (8, 16, 32, 64), "ecg_stem_stride": 8, "cxr_arch": "resnet_tiny"},
    ),
    "ln": ("search-base", {}, {"projection": "layernorm", "logit_scale_init": math.log(0.1)}),
    "ln-s1": ("search-base", {}, {"projection": "layernorm", "logit_scale_init": 0.0}),
    "none": ("search-base", {}, {"projection": "none", "logit_scale_init": math.log(0.1)}),
    "l2-s100": ("search-base", {}, {"logit_scale_init": math.log(100.0)}),
    "l2-s50": ("search-base", {}, {"logit_scale_init": math.log(50.0)}),
    "ln-s0.3": ("search-base", {}, {"projection": "layernorm", "logit_scale_init": math.log(0.3)}),
    "lr1e-2": ("search-base", {"lr": 1e-2}, {}),
    "ln3": (
        "search-base",
        {},
        {"projection": "layernorm", "logit_scale_init": math.log(0.037), "projection_offset": 3.0},
    ),
    "ln1": (
        "search-base",
        {},
        {"projection": "layernorm", "logit_scale_init": math.log(0.1), "projection_offset": 1.0},
    ),
    "e16": ("search-base", {"epochs": 16, "patience": 0}, {}),
    "frozen": ("search-base", {}, {"freeze_logit_scale": True}),
    "nsq": ("search-base", {"negatives": "n_squared"}, {}),
    "cond": ("search-base", {"negatives": "conditional"}, {}),
    # ECG roll up to 1 s, per-lead gain +-10%, CXR shift up to 4 px (training/augment.py).
    "aug": (
        "search-base",
        {"augment_ecg_shift": 500, "augment_ecg_gain": 0.1, "augment_cxr_shift": 4},
        {},
    ),
    # Fresh noise on every draw (symile_clinical/training/augment.py): ECG white noise (peak 1), CXR
    # pixel noise and log gain, lab percentile noise; "noise2" doubles them.
    "noise": (
        "search-base",
        {
            "augment_ecg_noise": 0.05,
            "augment_cxr_noise": 0.05,
            "augment_cxr_gain": 0.2,
            "augment_lab_noise": 0.1,
        },
        {},
    ),
    "noise2": (
        "search-base",
        {
            "augment_ecg_noise": 0.1,
            "augment_cxr_noise": 0.1,
            "augment_cxr_gain": 0.4,
            "augment_lab_noise": 0.2,
        },
        {},
    ),
    # The ECG encoder between "fast" and the base: stem stride 4 with fast's 8..64 channels,
    # and the base's ECG encoder (16..128 channels, stride 4) beside fast's CXR.
    "s4": ("search-base", {}, {"ecg_stem_stride": 4}),
    "ecgbase": ("search-base", {}, {"ecg_channels": (16, 32, 64, 128), "ecg_stem_stride": 4}),
    "labnoise": ("search-base", {"augment_lab_noise": 0.1}, {}),
    "e32": ("search-base", {"epochs": 32, "patience": 0}, {}),
    "e20": ("search-base", {"epochs": 20, "patience": 0}, {}),
    "e40": ("search-base", {"epochs": 40, "patience": 0}, {}),
    "lr3e-3": ("search-base", {"lr": 3e-3}, {}),
    "lr3e-4": ("search-base", {"lr": 3e-4}, {}),
    "wu100": ("search-base", {"warmup_steps": 100}, {}),
    "drop0.2": ("search-base", {"lab_dropout": 0.2}, {}),
    "bs32": ("search-base", {"batch_size": 32}, {}),
    "bs128": ("search-base", {"batch_size": 128}, {}),
    "d32": ("search-base", {}, {"embed_dim": 32}),
    "d512": ("search-base", {}, {"embed_dim": 512}),
    "d512s": ("search-base", {}, {"embed_dim": 512, "logit_scale_init": math.log(0.025)}),
    "d2048s": ("search-base", {}, {"embed_dim": 2048, "logit_scale_init": math.log(0.00625)}),
    # The higher-order objectives start from their demo presets (demo's encoders, epochs and
    # augmentation on unit vectors); what is searched is the initial logit scale, the one
    # setting their papers fix for a different scale of score (GRAM and TRIANGLE: CLIP's
    # 1/0.07 on volumes and areas; Gated Symile: 1 after its d^((M-1)/2) scaling).
    "gram": ("demo-gram", {}, {}),
    "triangle": ("demo-triangle", {}, {}),
    "gated-symile": ("demo-gated-symile", {}, {}),
    "s0.1": (None, {}, {"logit_scale_init": math.log(0.1)}),
    "s0.3": (None, {}, {"logit_scale_init": math.log(0.3)}),
    "s1": (None, {}, {"logit_scale_init": 0.0}),
    "s3": (None, {}, {"logit_scale_init": math.log(3.0)}),
    "s5": (None, {}, {"logit_scale_init": math.log(5.0)}),
    "s14": (None, {}, {"logit_scale_init": LOGIT_SCALE_INIT}),  # CLIP's 1/0.07
    "s50": (None, {}, {"logit_scale_init": math.log(50.0)}),
    "s100": (None, {}, {"logit_scale_init": math.log(100.0)}),  # the clamp (LOGIT_SCALE_MAX)
}


def variant_config(name: str, seed: int) -> Any:
    """The TrainConfig of a variant (see VARIANTS; "a+b" joins variants' overrides)."""
    from symile_clinical.formats.run_config import config_from_dict
    from symile_clinical.training.config import load_config

    preset, train, model = "search-base", {}, {}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"unknown variant {part!r}; known: {', '.join(VARIANTS)}")
        p, t, m = VARIANTS[part]
        preset, train, model = p or preset, {**train, **t}, {**model, **m}
    # The variants spell augmentation amounts as flat augment_* keys, which config_from_dict
    # reads into TrainConfig.augmentation.
    overrides = {**train, "model": model, "seed": seed, "device": "cpu", "preset": name}
    return config_from_dict(overrides, source=name, base=load_config(preset))


def truth_for(cohort: Path, split: str) -> Any:
    """The synthetic truth rows of a split, in the split's row order (pandas DataFrame)."""
    import pandas as pd

    from symile_clinical.formats.dataset_dir import DatasetDir

    truth = pd.read_csv(cohort / "mimic" / "synth_truth.csv.gz")
    manifest = DatasetDir(cohort / "dataset").manifest(split).sort_values("row")
    merged = manifest[["row", "hadm_id"]].merge(truth, on="hadm_id", how="left")
    return merged.sort_values("row").reset_index(drop=True)


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
    """Held-out accuracy of a ridge classifier (targets +-1, lambda 1 on standardised inputs)."""
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    a = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    b = np.c_[(x_val - mu) / sd, np.ones(len(x_val))]
    target = 2.0 * np.asarray(y_train, dtype=float) - 1
    w = np.linalg.solve(a.T @ a + 1.0 * len(a) * 1e-2 * np.eye(a.shape[1]), a.T @ target)
    return float(((b @ w > 0) == (np.asarray(y_val) > 0.5)).mean())


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray) -> np.ndarray:
    """Predicted 0/1 labels of val rows from the ridge classifier of `ridge_probe`."""
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    a = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    b = np.c_[(x_val - mu) / sd, np.ones(len(x_val))]
    target = 2.0 * np.asarray(y_train, dtype=float) - 1
    w = np.linalg.solve(a.T @ a + len(a) * 1e-2 * np.eye(a.shape[1]), a.T @ target)
    return (b @ w > 0).astype(int)


def probes(train_embs: Any, val_embs: Any, objective: str, truth_tr: Any, truth_va: Any):
    """Linear-probe accuracies on val (see the module docstring)."""
    from symile_clinical.objective.similarity import query_vector

    def q(embs: Any) -> np.ndarray:
        return np.asarray(query_vector(objective, [embs.ecg, embs.labs]))

    result: dict[str, float] = {}
    own = {"ecg": "ecg_bit_{k}", "labs": "lab_bit_{k}", "cxr": "cxr_bit_{k}"}
    for modality, column in own.items():
        x_tr, x_va = getattr(train_embs, modality), getattr(val_embs, modality)
        accs = [
            ridge_probe(x_tr, truth_tr[column.format(k=k)], x_va, truth_va[column.format(k=k)])
            for k in range(N_MARKERS)
        ]
        result[f"{modality}_own_bits"] = float(np.mean(accs))
    if objective in ("symile", "clip"):
        accs = [
            ridge_probe(
                q(train_embs), truth_tr[f"cxr_bit_{k}"], q(val_embs), truth_va[f"cxr_bit_{k}"]
            )
            for k in range(N_MARKERS)
        ]
        result["query_cxr_bits"] = float(np.mean(accs))
    else:  # GRAM's, TRIANGLE's and Gated Symile's scores have no single query vector
        result["query_cxr_bits"] = float("nan")
    # Whether ECG and labs embeddings carry each finding jointly at all, whatever the score
    # uses: the ECG-bit readout of e combined with the lab-bit readout of l by the marker's
    # own rule (XOR for a joint-only marker, the ECG readout for a pairwise one).
    accs = []
    for k in range(N_MARKERS):
        e_bit = ridge_predict(train_embs.ecg, truth_tr[f"ecg_bit_{k}"], val_embs.ecg)
        l_bit = ridge_predict(train_embs.labs, truth_tr[f"lab_bit_{k}"], val_embs.labs)
        joint = np.asarray(truth_va["joint_markers"])[0] > k
        guess = e_bit ^ l_bit if joint else e_bit
        accs.append(float((guess == np.asarray(truth_va[f"cxr_bit_{k}"])).mean()))
    result["readouts_cxr_bits"] = float(np.mean(accs))
    for modality in ("ecg", "labs", "cxr"):
        x_tr, x_va = getattr(train_embs, modality), getattr(val_embs, modality)
        result[f"{modality}_states"] = float(
            np.mean([ridge_probe(x_tr, truth_tr[s], x_va, truth_va[s]) for s in STATES])
        )
    return result


def start_weights(cohort: Path, start: str) -> Path | None:
    """The encoder weights a run starts from: none for "random", the cohort's own
    encoders-own.pt (what `study --pretrain-on own` trains from derived labels) for "own",
    else the file named."""
    if start == "random":
        return None
    if start == "own":
        from app.workflows.cohort import OWN_ENCODERS_FILE

        return cohort / OWN_ENCODERS_FILE
    return Path(start)


def diagnose_one(
    cohort: str, variant: str, seed: int, out: str, start: str = "random"
) -> dict[str, Any]:
    """Train (or reuse) one (cohort, variant, seed) from the encoder start and measure it on
    val."""
    import torch

    torch.set_num_threads(1)
    from symile_clinical.experiments.study_cells import (
        embedding_spread,
        logit_scale_trajectory,
        measure_embeddings,
        run_summary,
        split_embeddings,
    )
    from symile_clinical.formats.dataset_dir import DatasetDir
    from symile_clinical.formats.run_dir import RunDir
    from symile_clinical.training.trainer import train

    cohort_path = Path(cohort)
    dataset = DatasetDir(cohort_path / "dataset")
    folder = variant if start == "random" else f"{variant}@{Path(start).stem}"
    run = RunDir(Path(out) / "runs" / cohort_path.name / folder / f"s{seed}")
    result_path = run.path / "diagnosis.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    config = variant_config(variant, seed)
    weights = start_weights(cohort_path, start)
    if weights is not None:
        if not weights.exists():
            raise SystemExit(f"{weights}: no such encoder weights file (start {start!r})")
        config = dataclasses.replace(config, encoder_weights=str(weights))
    tick = time.perf_counter()
    if not run_summary(run):
        train(config, dataset, run, resume=run.has_checkpoint(), progress=False)
    seconds = time.perf_counter() - tick
    val, masked, score = split_embeddings(run, dataset, "val")
    train_embs, _, _ = split_embeddings(run, dataset, "train")
    measures = measure_embeddings(val, masked, score, dataset, "val", seed)
    objective = score.objective
    trajectory = logit_scale_trajectory(run)
    result = {
        "cohort": cohort_path.name,
        "variant": variant,
        "seed": seed,
        "objective": objective,
        "start": start,
        "train_seconds": round(seconds, 1),
        **{f"val_{k}": v for k, v in measures.summary().items()},
        "probes": probes(
            train_embs,
            val,
            objective,
            truth_for(cohort_path, "train"),
            truth_for(cohort_path, "val"),
        ),
        "spread": embedding_spread(val),
        "logit_scale": trajectory[:: max(1, len(trajectory) // 8)] + trajectory[-1:],
        "end": run_summary(run),
    }
    result_path.write_text(json.dumps(result, indent=1))
    return result


def _row(r: dict[str, Any]) -> str:
    p, s = r["probes"], r["spread"]
    scale = r["logit_scale"][-1][1] if r["logit_scale"] else float("nan")
    return (
        f"{r['cohort']:10s} {r['variant']:34s} s{r['seed']} top1 {r['val_top1']:.3f} "
        f"ecg-only {r['val_ecg_only_top1']:.3f} shuf {r['val_labs_shuffled_top1']:.3f} "
        f"gain {r['val_labs_gain']:+.3f} | probes e {p['ecg_own_bits']:.2f} l "
        f"{p['labs_own_bits']:.2f} c {p['cxr_own_bits']:.2f} q {p['query_cxr_bits']:.2f} "
        f"ro {p.get('readouts_cxr_bits', float('nan')):.2f} "
        f"st e/l/c {p['ecg_states']:.2f}/{p['labs_states']:.2f}/{p['cxr_states']:.2f} | "
        f"cos e/l/c {s['ecg']['mean_cosine']:.2f}/{s['labs']['mean_cosine']:.2f}/"
        f"{s['cxr']['mean_cosine']:.2f} rk {s['ecg']['effective_rank']:.0f}/"
        f"{s['labs']['effective_rank']:.0f}/{s['cxr']['effective_rank']:.0f} "
        f"scale {scale:.1f} ep {r['end'].get('epoch')} best {r['end'].get('best_epoch')} "
        f"{r['train_seconds']:.0f}s"
    )


# The search that chose the presets (docs/diagnosis.md), winner per objective by mean val
# top-1 over cohorts and seeds: projection, offset and negatives at the base's 8 epochs, then
# the best of those with and without augmentation at 16 epochs.
SEARCH_VARIANTS = (
    "symile+fast+ln",
    "symile+fast+ln+cond",
    "symile+fast+ln1+cond",
    "symile+fast+ln3+cond",
    "symile+fast+cond",
    "clip+fast",
    "symile+fast+ln1+cond+e16",
    "symile+fast+ln1+cond+aug+e16",
    "clip+fast+e16",
    "clip+fast+aug+e16",
)
# preset of training.config -> the variant it equals (tests/test_train.py holds this).
CHOSEN = {
    "demo": "symile+fast+ln1+cond+aug+e16",
    "demo-clip": "clip+fast+aug+e16",
    # Chosen from each cohort's own derived-label encoders (--start own); docs/study.md.
    "demo-gram": "gram+s50",
    "demo-triangle": "triangle+s100",
    "demo-gated-symile": "gated-symile+s0.3",
}


def choose_recipes(results: list[dict[str, Any]]) -> dict[str, str]:
    """Per objective, the variant with the highest mean VAL top-1 over cohorts and seeds
    (with its mean), from `diagnose_one` results."""
    means: dict[str, dict[str, list[float]]] = {}
    for r in results:
        means.setdefault(r["objective"], {}).setdefault(r["variant"], []).append(r["val_top1"])
    chosen = {}
    for objective, by_variant in means.items():
        scored = {v: float(np.mean(x)) for v, x in by_variant.items()}
        for variant, mean in sorted(scored.items(), key=lambda item: -item[1]):
            print(f"  {objective:6s} {variant:30s} mean val top-1 {mean:.3f}", flush=True)
        best = max(scored, key=scored.get)
        chosen[objective] = f"{best} (mean val top-1 {scored[best]:.3f})"
    return chosen


def run_grid(
    cohorts: list[str],
    variants: list[str],
    seeds: list[int],
    out: str,
    jobs: int,
    start: str = "random",
):
    """Every (cohort, variant, seed), `jobs` processes at once; prints one line each."""
    import multiprocessing

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tasks = [(c, v, s) for c in cohorts for v in variants for s in seeds]
    context = multiprocessing.get_context("spawn")
    results = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(diagnose_one, c, v, s, out, start) for c, v, s in tasks]
        for future in futures:
            result = future.result()
            results.append(result)
            print(_row(result), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("diagnose", "search"))
    parser.add_argument("--cohorts", required=True, help="comma-separated cohort folders")
    parser.add_argument(
        "--variants", default=None, help="default: SEARCH_VARIANTS (search) or the same"
    )
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="recipe-search")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--start",
        default="random",
        help="encoder start: random, own (each cohort's encoders-own.pt, pretrained on its "
        "derived labels by the study) or a weights file",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cohorts = args.cohorts.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    variants = args.variants.split(",") if args.variants else list(SEARCH_VARIANTS)
    results = run_grid(cohorts, variants, seeds, args.out, args.jobs, args.start)
    if args.mode == "search":
        for objective, chosen in choose_recipes(results).items():
            print(f"{objective}: {chosen}", flush=True)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)


if __name__ == "__main__":
    main()
