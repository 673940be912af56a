"""Where should the encoders learn from: a separate hospital, or the measured cohort's own
train split? Both with labels derived from MIMIC's label sources (`symile-clinical labels`).
Chosen on VALIDATION only: the test split is never read here.

For each cohort (the study's F = 0.5 and F = 1, cohort seed 0; the study's sizes), it makes
  separate: encoders pretrained on another synthetic hospital (seed 7, F 0.5), OUT/pretrain/
  own:      encoders pretrained on the cohort's own train split, OUT/cohorts/<cohort>/
then trains the `demo` (Symile) and `demo-clip` (CLIP) recipes from each for two training seeds
and prints the mean validation top-1 per (cohort, source, objective), with the spread.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pretrain_source --out study [--jobs 2]

OUT is a study folder: its cohorts and separate encoders are the very ones `symile-clinical
study --out OUT --pretrain` uses (the same "up to date" stamps), so nothing is made twice.
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

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("pretrain_source")
FRACTIONS = (0.5, 1.0)
PRESETS = {"symile": "demo", "clip": "demo-clip"}


def train_and_validate(task: tuple[str, str, int, str, str, str]) -> dict[str, Any]:
    """Train one preset from one weights file on one cohort; its validation measures."""
    import torch

    from symile_clinical.experiments.study_cells import (
        measure_embeddings,
        run_summary,
        split_embeddings,
    )
    from symile_clinical.formats.dataset_dir import DatasetDir
    from symile_clinical.formats.run_dir import RunDir
    from symile_clinical.training.config import load_config
    from symile_clinical.training.trainer import train

    cohort, source, seed, objective, weights, runs = task
    torch.set_num_threads(1)
    dataset = DatasetDir(Path(cohort) / "dataset")
    run = RunDir(Path(runs) / Path(cohort).name / source / objective / f"s{seed}")
    done = run.path / "validation.json"
    if done.exists():
        return json.loads(done.read_text())
    config = dataclasses.replace(
        load_config(PRESETS[objective]), seed=seed, device="cpu", encoder_weights=weights
    )
    if not run_summary(run):
        train(config, dataset, run, resume=run.has_checkpoint(), progress=False)
    embeddings, masked, kind = split_embeddings(run, dataset, "val")
    summary = measure_embeddings(embeddings, masked, kind, dataset, "val", seed).summary()
    row = {"cohort": Path(cohort).name, "source": source, "objective": objective, "seed": seed}
    row |= {"val_top1": summary["top1"], "val_ecg_only": summary.get("ecg_only_top1")}
    done.write_text(json.dumps(row, indent=1))
    return row


def main() -> int:
    """Make the cohorts and both encoder sources, train, print the validation table."""
    from app.workflows.cohort import (
        Steps,
        ensure_cohort,
        ensure_own_split_encoders,
    )
    from app.workflows.study import StudyConfig, cohort_dir, pretrained_encoders
    from symile_clinical.training.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("study"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = StudyConfig(out=args.out, pretrain=True, jobs=args.jobs, progress=False)
    steps = Steps(args.out)
    recipe = dataclasses.replace(load_config(config.recipes["symile"]), seed=0)
    separate = pretrained_encoders(config, steps)
    tasks = []
    for fraction in FRACTIONS:
        folder = cohort_dir(config, fraction, 0)
        ensure_cohort(config.cohort(fraction, 0), folder, steps, f"{folder.name}/", args.jobs)
        own = ensure_own_split_encoders(recipe, folder, config.pretrain_epochs, steps)
        for source, weights in (("separate", separate), ("own", own)):
            for objective in PRESETS:
                for seed in range(args.seeds):
                    runs = str(args.out / "pretrain-source")
                    tasks.append((str(folder), source, seed, objective, str(weights), runs))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        rows = list(pool.map(train_and_validate, tasks))
    (args.out / "pretrain-source" / "validation.json").write_text(json.dumps(rows, indent=1))
    print(f"load {os.getloadavg()}")
    print("| cohort | source | objective | val top-1 (mean of seeds) | seeds |")
    print("|---|---|---|---|---|")
    keys = sorted({(r["cohort"], r["source"], r["objective"]) for r in rows})
    for key in keys:
        values = [r["val_top1"] for r in rows if (r["cohort"], r["source"], r["objective"]) == key]
        mean = 100 * sum(values) / len(values)
        seeds = ", ".join(f"{100 * v:.1f}" for v in values)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {mean:.1f} | {seeds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
