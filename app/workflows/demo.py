"""`symile-clinical demo`: the whole main job on a fresh machine, in-process.

Steps, each skipped when current (app.workflows.cohort's one rule):

1. synthesise the demo cohort           OUT/mimic/       (app.workflows.cohort.ensure_cohort)
2. preprocess it                        OUT/dataset/
3. pretrain the encoders on labels derived from MIMIC-format label sources (unless `pretrain`
   is off), by default the demo cohort's own (`pretrain_on="own"`):
   derive its labels                    OUT/labels.csv (cohort.derived_labels)
   pretrain on its train split          OUT/encoders-own.pt (cohort.ensure_own_split_encoders)
   or, `pretrain_on="separate"`, on another synthetic hospital: synthesise and preprocess it,
   derive its labels and pretrain       OUT/pretrain/ (cohort.ensure_pretrained_encoders)
4. train Symile and pairwise CLIP, both from those encoders
                                        OUT/runs/symile/, OUT/runs/clip/ (training.trainer)
5. evaluate Symile with CLIP compared   OUT/runs/symile/report/ (evaluation.evaluate)
6. build each run's candidate index     OUT/runs/*/index/ (symile_clinical.search.index)
7. name CLIP as Symile's comparison     OUT/runs/symile/compare.json

The labels come from the cohort's MIMIC-format label sources (ECG machine statements, lab
reference ranges and flags, CheXpert table, radiology reports: `symile-clinical labels`),
never from the generator's answer key, and pretraining reads the train split's only; the
test split is never read. The own train split was chosen over a separate hospital on
validation (benchmarks/pretrain_source.py, docs/study.md); `separate` (its own seed) remains
the alternative. Why the encoders are pretrained: docs/diagnosis.md, round 3.

"Current": the step's stamp (OUT/.stamps/<step>.json, OUT/pretrain/.stamps/ for the
pretraining cohort and encoders) holds exactly the inputs that determine its output (its
settings and the sha256 of the files it reads), and that output is complete; the study
(app/workflows/study.py) decides by the same rule. Indexing checks itself (an index of
another checkpoint is rebuilt).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.workflows.cohort import (
    PRETRAIN_SEED,
    PRETRAIN_SOURCES,
    CohortSpec,
    Steps,
    ensure_cohort,
    ensure_own_split_encoders,
    ensure_pretrained_encoders,
    refuse_pretraining_on_measured,
)
from symile_clinical.errors import UsageError
from symile_clinical.formats.checkpoint import file_sha256
from symile_clinical.formats.run_dir import RunDir

if TYPE_CHECKING:
    from symile_clinical.formats.run_config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """What `symile-clinical demo` builds; defaults are the demo the README describes."""

    out: Path = Path("demo-data")
    admissions: int = 2000
    seed: int = 0
    joint_fraction: float = 0.5
    cxr_max_size: int = 256  # synthetic DICOM side (px); real ones are 1k-3k
    cxr_size: int = 64  # preprocessed CXR side, the demo model's input
    workers: int = max(1, os.cpu_count() or 1)
    # Each objective's own recipe (a preset of training.config, chosen on validation:
    # docs/diagnosis.md).
    symile_preset: str = "demo"
    clip_preset: str = "demo-clip"
    epochs: int | None = None  # None: the preset's
    max_steps: int | None = None  # None: the preset's (all epochs)
    n_bootstrap: int = 1000
    # Encoders pretrained on derived labels (where: `pretrain_on`) before both objectives are
    # trained; False: from random weights.
    pretrain: bool = True
    # Where the encoders learn (cohort.PRETRAIN_SOURCES): the demo cohort's "own" train split
    # (chosen on validation: benchmarks/pretrain_source.py, docs/study.md) or a "separate"
    # hospital; labels derived from MIMIC's label sources either way.
    pretrain_on: str = "own"
    pretrain_admissions: int = 2000
    pretrain_seed: int = PRETRAIN_SEED
    pretrain_epochs: int = 20
    # Symile and CLIP trained at once in two processes, each with half the cores: small
    # models use one thread better than two, so this finishes sooner than one after another.
    parallel_training: bool = True
    progress: bool = True

    def cohort(self) -> CohortSpec:
        """The demo cohort (OUT/mimic, OUT/dataset)."""
        return CohortSpec(
            self.admissions, self.seed, self.joint_fraction, self.cxr_max_size, self.cxr_size
        )

    def pretraining_cohort(self) -> CohortSpec:
        """The separate cohort the encoders are pretrained on with pretrain_on="separate"
        (OUT/pretrain/)."""
        return dataclasses.replace(
            self.cohort(), admissions=self.pretrain_admissions, seed=self.pretrain_seed
        )


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things, and which steps ran (the others were current)."""

    mimic_root: Path
    dataset: Path
    symile_run: Path
    clip_run: Path
    ran: tuple[str, ...]
    seconds: float


def _train_config(
    config: DemoConfig, objective: str, encoder_weights: Path | None = None
) -> TrainConfig:
    """The preset's training config with the demo's objective, seed and epoch limits, its
    encoders started from `encoder_weights` when given."""
    from symile_clinical.formats.run_config import config_from_dict
    from symile_clinical.training.config import load_config

    overrides: dict[str, Any] = {"objective": objective, "seed": config.seed, "device": "cpu"}
    if encoder_weights is not None:
        overrides["encoder_weights"] = str(encoder_weights.resolve())
    if config.epochs is not None:
        overrides["epochs"] = config.epochs
    if config.max_steps is not None:
        overrides["max_steps"] = config.max_steps
    preset = config.symile_preset if objective == "symile" else config.clip_preset
    return config_from_dict(overrides, source="demo", base=load_config(preset))


def _train(train_config: Any, dataset: Path, run: RunDir, progress: bool) -> None:
    """Train from scratch: a run left by an earlier, different or killed demo is replaced."""
    import shutil

    from symile_clinical.training.trainer import train

    if run.path.exists():
        shutil.rmtree(run.path)
    train(train_config, dataset, run.path, progress=progress)


def _train_worker(train_config: Any, dataset: Path, run: RunDir, threads: int) -> RunDir:
    """One training in a spawned process, with its own thread budget."""
    import torch

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(threads)
    _train(train_config, dataset, run, progress=False)
    return run


def _train_in_parallel(pending: list, dataset: Path, steps: Steps) -> None:
    """Train each pending (name, inputs, config, RunDir) in its own process; stamps each;
    removes what finished from `pending` (a failure is raised after both have ended)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 2) // len(pending))
    log.info("demo: training %s in parallel ...", ", ".join(p[0] for p in pending))
    tick = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(max_workers=len(pending), mp_context=context) as pool:
        futures = [
            pool.submit(_train_worker, train_config, dataset, run, threads)
            for _, _, train_config, run in pending
        ]
        results = [future.exception() for future in futures]
    for item, error in zip(list(pending), results, strict=True):
        if error is None:
            steps.mark_done(item[0], item[1])
            pending.remove(item)
    failures = [error for error in results if error is not None]
    if failures:
        raise failures[0]
    log.info("demo: parallel training done in %.1f s", time.perf_counter() - tick)


def run_demo(config: DemoConfig) -> DemoResult:
    """Synthesise, preprocess, train Symile and CLIP, evaluate, index; skip what is current."""
    from symile_clinical.evaluation.evaluate import EvaluateConfig, evaluate
    from symile_clinical.formats.run_config import config_to_dict
    from symile_clinical.search.index import IndexConfig, ensure_index
    from symile_clinical.training.config import load_config

    if config.pretrain_on not in PRETRAIN_SOURCES:
        raise UsageError("--pretrain-on", f"one of {', '.join(PRETRAIN_SOURCES)}")
    if config.pretrain and config.pretrain_on == "separate":
        refuse_pretraining_on_measured("--seed", [config.seed], config.pretrain_seed)
    start = time.perf_counter()
    out = Path(config.out)
    mimic, dataset = out / "mimic", out / "dataset"
    symile_run, clip_run = out / "runs" / "symile", out / "runs" / "clip"
    runs = {"symile": RunDir(symile_run), "clip": RunDir(clip_run)}  # by objective
    steps = Steps(out)

    data = ensure_cohort(config.cohort(), out, steps, "", config.workers, config.progress)
    dataset_sha = data.sha256()
    weights = None
    if config.pretrain:
        # The Symile preset's model and optimiser, the demo's training seed.
        recipe = dataclasses.replace(load_config(config.symile_preset), seed=config.seed)
        if config.pretrain_on == "own":
            weights = ensure_own_split_encoders(
                recipe, out, config.pretrain_epochs, steps, config.progress
            )
        else:
            weights = ensure_pretrained_encoders(
                recipe,
                config.pretraining_cohort(),
                out / "pretrain",
                config.pretrain_epochs,
                steps,
                config.workers,
                config.progress,
            )

    pending = []
    for objective, run in runs.items():
        train_config = _train_config(config, objective, weights)
        inputs = {"dataset": dataset_sha, "config": config_to_dict(train_config)}
        if weights is not None:
            inputs["encoder_weights"] = file_sha256(weights)
        if not steps.is_current(f"train-{objective}", inputs, run.last_checkpoint):
            pending.append((f"train-{objective}", inputs, train_config, run))
    if config.parallel_training and len(pending) == 2:
        _train_in_parallel(pending, dataset, steps)
    for name, inputs, train_config, run in pending:
        steps.run(
            name,
            inputs,
            run.last_checkpoint,
            lambda c=train_config, r=run: _train(c, dataset, r, config.progress),
        )

    checkpoints = {name: file_sha256(run.checkpoint("best")) for name, run in runs.items()}
    evaluate_config = EvaluateConfig(
        run_dir=symile_run,
        data_dir=dataset,
        compare=(clip_run,),
        n_bootstrap=config.n_bootstrap,
        seed=config.seed,
    )
    steps.run(
        "evaluate",
        {"checkpoints": checkpoints, "n_bootstrap": config.n_bootstrap, "dataset": dataset_sha},
        runs["symile"].report_metrics,
        lambda: evaluate(evaluate_config),
    )

    for name, run in runs.items():
        index_config = IndexConfig(run_dir=run.path, data_dir=data.path)
        _, rebuilt = ensure_index(run.load(), index_config, config.progress)
        if rebuilt:
            steps.ran.append(f"index-{name}")
    runs["symile"].write_comparisons([("CLIP", clip_run)])
    return DemoResult(
        mimic, dataset, symile_run, clip_run, tuple(steps.ran), time.perf_counter() - start
    )
