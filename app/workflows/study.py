"""`symile-clinical study`: the joint-fraction experiment end to end, Symile against CLIP.

For each joint fraction F and cohort seed, a synthetic cohort is generated and preprocessed
(OUT/cohorts/F<F>_c<seed>/mimic, .../dataset) through the public entry points of
`preprocessing.synth` and `preprocessing.pipeline`; then each objective is trained with its
own recipe (a preset of symile_clinical.training.config) for every training seed, and its best
checkpoint (chosen on val by the trainer) is measured once on the test split
(experiments.study_cells.run_cell). The report (OUT/report/) gives the mean test top-1 per
(F, objective) with a CI over runs, the paired Symile - CLIP difference per F, the labs'
gain per objective and a plot of accuracy against F.

It lives in app/ (like app/workflows/demo.py) because it generates cohorts, and symile_clinical may
not import preprocessing. Resumable: a cohort whose dataset is complete and a cell whose
study_result.json exists are reused; a killed training resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from symile_clinical.errors import UsageError
from symile_clinical.formats.dataset_dir import DatasetDir

log = logging.getLogger(__name__)

# Each objective's recipe: a preset name of symile_clinical.training.config (chosen on validation by
# benchmarks/recipe_search.py; docs/diagnosis.md).
DEFAULT_RECIPES = {"symile": "demo", "clip": "demo-clip"}


@dataclass(frozen=True)
class StudyConfig:
    """The study's size; defaults are the documented study, `quick()` a check-sized one."""

    out: Path = Path("study")
    admissions: int = 2000
    fractions: tuple[float, ...] = (0.0, 0.5, 1.0)
    cohort_seeds: tuple[int, ...] = (0, 1)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    recipes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RECIPES))
    jobs: int = 2
    max_steps: int | None = None  # None: the recipes' own length
    encoder_weights: Path | None = None  # pretrained encoders for every run (both objectives)
    # Make them first from a separate labelled cohort (OUT/pretrain/, seed PRETRAIN_SEED, F 0.5)
    pretrain: bool = False
    pretrain_epochs: int = 20
    cxr_max_size: int = 256
    cxr_size: int = 64
    progress: bool = True

    @classmethod
    def quick(cls, out: Path, **changes: Any) -> StudyConfig:
        """A tiny study for checks: 2 fractions, 1 cohort, 2 seeds, a few steps."""
        values: dict[str, Any] = {
            "out": out,
            "admissions": 300,
            "fractions": (0.0, 1.0),
            "cohort_seeds": (0,),
            "seeds": (0, 1),
            "max_steps": 2,
            "pretrain_epochs": 1,
        }
        return cls(**{**values, **changes})


# The pretraining cohort: another synthetic hospital, the demo's (app/workflows/demo.py) by default.
PRETRAIN_SEED, PRETRAIN_FRACTION = 7, 0.5


def cohort_dir(config: StudyConfig, fraction: float, cohort_seed: int) -> Path:
    """OUT/cohorts/F<F>_c<seed>."""
    return Path(config.out) / "cohorts" / f"F{fraction:g}_c{cohort_seed}"


def ensure_cohort(
    config: StudyConfig, fraction: float, cohort_seed: int, folder: Path | None = None
) -> DatasetDir:
    """Generate and preprocess one cohort (into `folder`, default `cohort_dir`) unless its
    dataset is already complete."""
    from preprocessing.pipeline import PreprocessConfig, run_preprocess
    from preprocessing.synth.config import SynthConfig
    from preprocessing.synth.generate import generate_cohort

    folder = folder or cohort_dir(config, fraction, cohort_seed)
    dataset = DatasetDir(folder / "dataset")
    if dataset.is_complete():
        return dataset
    # A cohort left half-made by a killed study is made again from scratch.
    shutil.rmtree(folder, ignore_errors=True)
    log.info("study: cohort F=%g seed %d ...", fraction, cohort_seed)
    generate_cohort(
        SynthConfig(
            out=folder / "mimic",
            admissions=config.admissions,
            seed=cohort_seed,
            joint_fraction=fraction,
            workers=max(1, config.jobs),
            cxr_max_size=config.cxr_max_size,
            progress=False,
        )
    )
    run_preprocess(
        PreprocessConfig(
            mimic_root=folder / "mimic",
            out=dataset.path,
            workers=max(1, config.jobs),
            cxr_size=config.cxr_size,
            seed=cohort_seed,
            progress=False,
        )
    )
    return dataset


def ensure_pretrained_encoders(config: StudyConfig) -> Path:
    """OUT/pretrain/encoders.pt: the Symile recipe's encoders (training seed 0) pretrained
    on the findings of a separate cohort (OUT/pretrain/, seed PRETRAIN_SEED, F 0.5), made
    unless already there."""
    from preprocessing.synth.labels import write_finding_labels
    from symile_clinical.formats.atomic import write_json_atomic
    from symile_clinical.training.config import config_to_dict, load_config
    from symile_clinical.training.pretrain import pretrain_encoders

    folder = Path(config.out) / "pretrain"
    weights, stamp = folder / "encoders.pt", folder / "encoders.json"
    recipe = dataclasses.replace(load_config(config.recipes["symile"]), seed=0)
    trained = config_to_dict(recipe)
    inputs = {
        "cohort": [config.admissions, config.cxr_max_size, config.cxr_size],
        "epochs": config.pretrain_epochs,
        **{k: trained[k] for k in ("model", "lr", "weight_decay", "batch_size", "seed")},
    }
    if weights.exists() and stamp.exists() and json.loads(stamp.read_text()) == inputs:
        return weights
    shutil.rmtree(folder, ignore_errors=True)  # made for another study size or recipe
    dataset = ensure_cohort(config, PRETRAIN_FRACTION, PRETRAIN_SEED, folder)
    labels = write_finding_labels(folder / "mimic", folder / "labels.csv")
    pretrain_encoders(
        recipe, dataset, labels, weights, config.pretrain_epochs, progress=config.progress
    )
    write_json_atomic(stamp, inputs)
    return weights


def _check_weights_fit(config: StudyConfig) -> None:
    """Every recipe's model takes the encoder weights (a ConfigError naming the file and the
    encoder otherwise, exit 1), before any cell trains."""
    from models import WeightsError, build_model
    from symile_clinical.training.config import ConfigError, fit_model_to_data, load_config

    train = ensure_cohort(config, config.fractions[0], config.cohort_seeds[0]).split("train")
    for recipe in config.recipes.values():
        model = fit_model_to_data(load_config(recipe), train).model
        try:
            build_model(model, seed=0, encoder_weights=Path(config.encoder_weights))
        except WeightsError as error:
            raise ConfigError(error.path, f"{error.reason} (recipe {recipe})") from error


def run_study(config: StudyConfig, command: str = "symile-clinical study") -> dict[str, Any]:
    """Cohorts, every cell, the report; returns {"summary", "files", "results"}."""
    from symile_clinical.experiments.study_cells import (
        StudyCell,
        run_cells,
        summarise_study,
        write_study_report,
    )

    if config.pretrain:
        if config.encoder_weights is not None:
            raise UsageError("--pretrain", "makes the encoder weights: drop --encoder-weights")
        if PRETRAIN_SEED in config.cohort_seeds:
            raise UsageError(
                "--cohort-seeds",
                f"cohort seed {PRETRAIN_SEED} is the pretraining cohort's: the encoders would "
                "have seen that cohort's labels (use at most 7 cohort seeds with --pretrain)",
            )
        config = dataclasses.replace(config, encoder_weights=ensure_pretrained_encoders(config))
    if config.encoder_weights is not None:
        _check_weights_fit(config)

    cells = []
    for fraction in config.fractions:
        for cohort_seed in config.cohort_seeds:
            dataset = ensure_cohort(config, fraction, cohort_seed)
            for objective, recipe in config.recipes.items():
                for seed in config.seeds:
                    cell = StudyCell(fraction, cohort_seed, objective, recipe, seed)
                    cells.append((cell, dataset.path))
    weights = str(Path(config.encoder_weights).resolve()) if config.encoder_weights else None
    results = run_cells(
        cells, Path(config.out) / "runs", config.jobs, config.max_steps, config.progress, weights
    )
    summary = summarise_study(results)
    files = write_study_report(config.out, summary, command)
    log.info("study: report in %s", files["markdown"])
    return {"summary": summary, "files": files, "results": results}
