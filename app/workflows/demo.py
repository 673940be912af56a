"""`symile-clinical demo`: the whole main job on a fresh machine, in-process.

Steps, each skipped when its output is already there and current:

1. synthesise the demo cohort           OUT/mimic/       (preprocessing.synth.generate_cohort)
2. preprocess it                        OUT/dataset/     (preprocessing.pipeline.run_preprocess)
3. pretrain the encoders on a separate labelled cohort's findings (unless `pretrain` is off):
   synthesise and preprocess it         OUT/pretrain/mimic/, OUT/pretrain/dataset/
   pretrain                             OUT/pretrain/encoders.pt (symile_clinical.training.pretrain)
4. train Symile and pairwise CLIP, both from those encoders
                                        OUT/runs/symile/, OUT/runs/clip/ (training.trainer)
5. evaluate Symile with CLIP compared   OUT/runs/symile/report/ (evaluation.evaluate)
6. build each run's candidate index     OUT/runs/*/index/ (symile_clinical.search.index)
7. name CLIP as Symile's comparison     OUT/runs/symile/compare.json

The pretraining cohort is another synthetic hospital (its own seed): its findings play the
part of the labelled data a pretrained ECG or CXR network was trained on, and the demo
cohort lends no labels. Why the encoders are pretrained: docs/diagnosis.md, round 3.

"Current" is decided by a stamp per step in OUT/.demo/<step>.json holding the inputs that
determine the step's output (its settings and the sha256 of the files it reads); a step
whose stamp differs runs again. Preprocessing and indexing also check themselves (a
dataset built with other settings is refused; an index of another checkpoint is rebuilt).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from symile_clinical.errors import UsageError
from symile_clinical.formats.atomic import write_json_atomic
from symile_clinical.formats.checkpoint import file_sha256
from symile_clinical.formats.dataset_dir import DatasetDir
from symile_clinical.formats.run_dir import RunDir

if TYPE_CHECKING:
    from symile_clinical.training.config import TrainConfig

log = logging.getLogger(__name__)

STAMP_DIR = ".demo"


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
    # Encoders pretrained on a separate labelled cohort (seed `pretrain_seed`, the demo's
    # joint fraction) before both objectives are trained; False: from random weights.
    pretrain: bool = True
    pretrain_admissions: int = 2000
    pretrain_seed: int = 7
    pretrain_epochs: int = 20
    # Symile and CLIP trained at once in two processes, each with half the cores: small
    # models use one thread better than two, so this finishes sooner than one after another.
    parallel_training: bool = True
    progress: bool = True


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things, and which steps ran (the others were current)."""

    mimic_root: Path
    dataset: Path
    symile_run: Path
    clip_run: Path
    ran: tuple[str, ...]
    seconds: float


class _Steps:
    """Runs each step unless its stamp (the inputs it was last run with) still matches."""

    def __init__(self, out: Path) -> None:
        self.folder = out / STAMP_DIR
        self.ran: list[str] = []

    @staticmethod
    def _normal(inputs: dict[str, Any]) -> Any:
        """`inputs` as its JSON stamp reads back: keys sorted, non-JSON values as str."""
        return json.loads(json.dumps(inputs, sort_keys=True, default=str))

    def is_current(self, name: str, inputs: dict[str, Any], output: Path) -> bool:
        """Whether `output` exists and OUT/.demo/<name>.json holds exactly `inputs`."""
        stamp = self.folder / f"{name}.json"
        return (
            output.exists()
            and stamp.exists()
            and json.loads(stamp.read_text()) == self._normal(inputs)
        )

    def mark_done(self, name: str, inputs: dict[str, Any]) -> None:
        """Record that `name` ran with `inputs`."""
        write_json_atomic(self.folder / f"{name}.json", self._normal(inputs))
        self.ran.append(name)

    def run(
        self, name: str, inputs: dict[str, Any], output: Path, step: Callable[[], object]
    ) -> None:
        """Run `step` unless `output` exists and OUT/.demo/<name>.json holds `inputs`."""
        stamp = self.folder / f"{name}.json"
        if self.is_current(name, inputs, output):
            log.info("demo: %s is current, skipped", name)
            return
        stamp.unlink(missing_ok=True)  # a step that fails half-way is not current
        log.info("demo: %s ...", name)
        tick = time.perf_counter()
        step()
        self.mark_done(name, inputs)
        log.info("demo: %s done in %.1f s", name, time.perf_counter() - tick)


def _train_config(
    config: DemoConfig, objective: str, encoder_weights: Path | None = None
) -> TrainConfig:
    """The preset's training config with the demo's objective, seed and epoch limits, its
    encoders started from `encoder_weights` when given."""
    from symile_clinical.training.config import config_from_dict, load_config

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


def _train_in_parallel(pending: list, dataset: Path, steps: _Steps) -> None:
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


def _cohort(
    config: DemoConfig,
    steps: _Steps,
    prefix: str,
    mimic: Path,
    dataset: Path,
    seed: int,
    admissions: int,
) -> None:
    """Synthesise and preprocess one cohort (steps `<prefix>synth`, `<prefix>preprocess`)."""
    from preprocessing.pipeline import PreprocessConfig, run_preprocess
    from preprocessing.synth.config import SynthConfig
    from preprocessing.synth.generate import MARKER_FILE, generate_cohort

    synth = SynthConfig(
        out=mimic,
        admissions=admissions,
        seed=seed,
        joint_fraction=config.joint_fraction,
        workers=config.workers,
        cxr_max_size=config.cxr_max_size,
        progress=config.progress,
    )
    synth_inputs = {
        k: v for k, v in dataclasses.asdict(synth).items() if k not in ("workers", "progress")
    }
    steps.run(f"{prefix}synth", synth_inputs, mimic / MARKER_FILE, lambda: generate_cohort(synth))
    preprocess = PreprocessConfig(
        mimic_root=mimic,
        out=dataset,
        workers=config.workers,
        cxr_size=config.cxr_size,
        seed=seed,
        progress=config.progress,
    )

    def preprocess_step() -> None:
        import shutil

        # A dataset of an earlier cohort is refused by run_preprocess: start it afresh.
        if dataset.exists():
            shutil.rmtree(dataset)
        run_preprocess(preprocess)

    preprocess_inputs = {"synth": synth_inputs, "fingerprint": preprocess.fingerprint()}
    steps.run(
        f"{prefix}preprocess",
        preprocess_inputs,
        DatasetDir(dataset).dataset_json_path,
        preprocess_step,
    )


def _pretrained_encoders(config: DemoConfig, steps: _Steps, folder: Path) -> Path:
    """The pretraining cohort, its findings as labels, and the encoders trained on them
    (FOLDER/encoders.pt); the Symile preset's model, the demo's training seed."""
    from preprocessing.synth.labels import write_finding_labels
    from symile_clinical.training.config import config_to_dict, load_config
    from symile_clinical.training.pretrain import pretrain_encoders

    mimic, dataset = folder / "mimic", folder / "dataset"
    _cohort(
        config, steps, "pretrain-", mimic, dataset, config.pretrain_seed, config.pretrain_admissions
    )
    pre_config = dataclasses.replace(load_config(config.symile_preset), seed=config.seed)
    weights = folder / "encoders.pt"
    trained = config_to_dict(pre_config)
    inputs = {  # what pretraining reads of the preset: its model and optimiser, not its epochs
        "dataset": DatasetDir(dataset).sha256(),
        "epochs": config.pretrain_epochs,
        **{k: trained[k] for k in ("model", "lr", "weight_decay", "batch_size", "seed")},
    }

    def pretrain_step() -> None:
        labels = write_finding_labels(mimic, folder / "labels.csv")
        pretrain_encoders(
            pre_config,
            DatasetDir(dataset),
            labels,
            weights,
            epochs=config.pretrain_epochs,
            progress=config.progress,
        )

    steps.run("pretrain", inputs, weights, pretrain_step)
    return weights


def run_demo(config: DemoConfig) -> DemoResult:
    """Synthesise, preprocess, train Symile and CLIP, evaluate, index; skip what is current."""
    from symile_clinical.evaluation.evaluate import EvaluateConfig, evaluate
    from symile_clinical.search.index import IndexConfig, ensure_index
    from symile_clinical.training.config import config_to_dict

    if config.pretrain and config.seed == config.pretrain_seed:
        raise UsageError(
            "--seed",
            f"{config.seed} is the pretraining cohort's seed: the encoders would have seen "
            "the demo cohort's labels",
        )
    start = time.perf_counter()
    out = Path(config.out)
    mimic, dataset = out / "mimic", out / "dataset"
    symile_run, clip_run = out / "runs" / "symile", out / "runs" / "clip"
    data = DatasetDir(dataset)
    runs = {"symile": RunDir(symile_run), "clip": RunDir(clip_run)}  # by objective
    steps = _Steps(out)

    _cohort(config, steps, "", mimic, dataset, config.seed, config.admissions)
    dataset_sha = data.sha256()
    weights = _pretrained_encoders(config, steps, out / "pretrain") if config.pretrain else None

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
