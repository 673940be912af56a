"""One cohort builder and one "up to date" rule, shared by the demo and the study.

A cohort folder holds a synthetic cohort in MIMIC's formats (FOLDER/mimic, written by
preprocessing.synth) and the dataset preprocessed from it (FOLDER/dataset, by
preprocessing.pipeline). Pretrained encoders live in a folder of their own with their own
cohort (FOLDER/mimic, FOLDER/dataset, FOLDER/labels.csv) and FOLDER/encoders.pt
(symile_clinical.training.pretrain).

The rule, for every step of a workflow (`Steps.run`): a step is skipped only when its stamp,
FOLDER/.stamps/<step>.json, records exactly the parameters it would run with now AND its
output is complete (the file the step writes last exists). Otherwise the stamp is removed
first (a step killed half-way is not current), the step runs, and its stamp is written.
Stamps lie beside what they describe, so a cohort is current for whichever workflow asks
for it with the same parameters (paths included: a dataset records the release it was read
from, so a moved cohort is made again).

The pretraining cohort is another synthetic hospital (seed PRETRAIN_SEED): its findings play
the part of the labelled data a pretrained ECG or CXR network was trained on, so it must not
be a cohort the workflow measures (`refuse_pretraining_on_measured`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from symile_clinical.errors import UsageError
from symile_clinical.formats.atomic import write_json_atomic
from symile_clinical.formats.dataset_dir import DatasetDir

if TYPE_CHECKING:
    from symile_clinical.formats.run_config import TrainConfig

log = logging.getLogger(__name__)

STAMP_DIR = ".stamps"
ENCODERS_FILE = "encoders.pt"
OWN_ENCODERS_FILE = "encoders-own.pt"
LABELS_FILE = "labels.csv"
# Where the encoders learn their labels: "own" (the measured cohort's own train split) or
# "separate" (another synthetic hospital, seed PRETRAIN_SEED); "own" was chosen on
# validation (benchmarks/pretrain_source.py; docs/study.md).
PRETRAIN_SOURCES = ("separate", "own")
# What the encoders of the demo and the study learn from, as their reports say.
DERIVED_LABEL_SOURCE = (
    "labels derived from the cohort's MIMIC-format label sources (`symile-clinical labels`: "
    "ECG machine statements, lab reference ranges and flags, CheXpert table, radiology reports)"
)

# The pretraining cohort of the demo and of `study --pretrain`: another synthetic hospital.
PRETRAIN_SEED, PRETRAIN_FRACTION = 7, 0.5

# What pretraining reads of a recipe: its model and optimiser, not its epochs or objective.
PRETRAIN_RECIPE_KEYS = ("model", "lr", "weight_decay", "batch_size", "seed")


class Steps:
    """The "up to date" rule (module docstring) for one workflow run; `ran` lists, in order,
    the steps that ran (`<prefix><step>`); the others were current."""

    def __init__(self, folder: Path, prefix: str = "", ran: list[str] | None = None) -> None:
        self.folder = Path(folder) / STAMP_DIR
        self.prefix = prefix
        self.ran: list[str] = [] if ran is None else ran

    def at(self, folder: Path, prefix: str = "") -> Steps:
        """Steps stamped in FOLDER/.stamps, listed in this run's `ran` with `prefix` added."""
        return Steps(folder, self.prefix + prefix, self.ran)

    def stamp(self, name: str) -> Path:
        """FOLDER/.stamps/<name>.json."""
        return self.folder / f"{name}.json"

    @staticmethod
    def _normal(inputs: dict[str, Any]) -> Any:
        """`inputs` as its JSON stamp reads back: keys sorted, non-JSON values as str."""
        return json.loads(json.dumps(inputs, sort_keys=True, default=str))

    def is_current(self, name: str, inputs: dict[str, Any], output: Path) -> bool:
        """Whether `output` (written last by the step) exists and the stamp holds `inputs`."""
        stamp = self.stamp(name)
        return (
            output.exists()
            and stamp.exists()
            and json.loads(stamp.read_text()) == self._normal(inputs)
        )

    def mark_done(self, name: str, inputs: dict[str, Any]) -> None:
        """Record that step `name` ran with `inputs`."""
        write_json_atomic(self.stamp(name), self._normal(inputs))
        self.ran.append(self.prefix + name)

    def run(
        self, name: str, inputs: dict[str, Any], output: Path, step: Callable[[], object]
    ) -> None:
        """Run `step` unless it is current (`is_current`); stamp it when it has run."""
        label = self.prefix + name
        if self.is_current(name, inputs, output):
            log.info("%s is current, skipped", label)
            return
        self.stamp(name).unlink(missing_ok=True)  # a step that fails half-way is not current
        log.info("%s ...", label)
        tick = time.perf_counter()
        step()
        self.mark_done(name, inputs)
        log.info("%s done in %.1f s", label, time.perf_counter() - tick)


@dataclass(frozen=True)
class CohortSpec:
    """What a synthetic cohort and its dataset are made from: the parameters stamped."""

    admissions: int
    seed: int  # the synthetic hospital's seed, also the preprocessing seed (splits, candidates)
    joint_fraction: float
    cxr_max_size: int  # synthetic DICOM side cap (px); real ones are 1k-3k
    cxr_size: int  # preprocessed CXR side (px), the model's input


def ensure_cohort(
    spec: CohortSpec,
    folder: Path,
    steps: Steps,
    prefix: str = "",
    workers: int = 1,
    progress: bool = False,
) -> DatasetDir:
    """FOLDER/mimic synthesised and FOLDER/dataset preprocessed from it (steps `synth` and
    `preprocess`, listed as `<prefix>synth`, `<prefix>preprocess`), each unless current."""
    from preprocessing.pipeline import PreprocessConfig, run_preprocess
    from preprocessing.synth.config import SynthConfig
    from preprocessing.synth.generate import MARKER_FILE, generate_cohort

    folder = Path(folder)
    here = steps.at(folder, prefix)
    mimic, dataset = folder / "mimic", DatasetDir(folder / "dataset")
    synth = SynthConfig(
        out=mimic,
        admissions=spec.admissions,
        seed=spec.seed,
        joint_fraction=spec.joint_fraction,
        workers=workers,
        cxr_max_size=spec.cxr_max_size,
        progress=progress,
    )
    # Every setting that shapes the files, the generator's defaults too.
    synth_inputs = {
        k: v for k, v in dataclasses.asdict(synth).items() if k not in ("workers", "progress")
    }
    # generate_cohort replaces a cohort of its own left in `mimic`, finished or not.
    here.run("synth", synth_inputs, mimic / MARKER_FILE, lambda: generate_cohort(synth))

    preprocess = PreprocessConfig(
        mimic_root=mimic,
        out=dataset.path,
        workers=workers,
        cxr_size=spec.cxr_size,
        seed=spec.seed,
        progress=progress,
    )

    def preprocess_step() -> None:
        # run_preprocess refuses a dataset of other settings or another cohort: start afresh.
        shutil.rmtree(dataset.path, ignore_errors=True)
        run_preprocess(preprocess)

    preprocess_inputs = {"synth": synth_inputs, "fingerprint": preprocess.fingerprint()}
    here.run("preprocess", preprocess_inputs, dataset.dataset_json_path, preprocess_step)
    return dataset


def derived_labels(folder: Path, dataset: DatasetDir, steps: Steps) -> Path:
    """FOLDER/labels.csv: the cohort's labels derived from its own label sources (ECG machine
    statements, lab reference ranges and flags, CheXpert table, radiology reports) by
    `symile-clinical labels` (preprocessing.label_sources), never from the generator's answer
    key; step `labels`, unless current."""
    from preprocessing.label_sources.derive import LabelsConfig, write_labels

    folder = Path(folder)
    out = folder / LABELS_FILE
    config = LabelsConfig(mimic_root=folder / "mimic", dataset=dataset.path, out=out)
    from symile_clinical.formats.checkpoint import file_sha256

    # The phrase table is data a user may edit: a new one derives the labels again.
    inputs = {
        "dataset": dataset.sha256(),
        "policy": [config.uncertainty, config.cxr_labeler],
        "phrase_table": file_sha256(config.phrase_table),
    }
    steps.at(folder).run("labels", inputs, out, lambda: write_labels(config))
    return out


def pretrain_on_labels(
    recipe: TrainConfig,
    dataset: DatasetDir,
    labels: Path,
    weights: Path,
    epochs: int,
    steps: Steps,
    progress: bool = False,
    name: str = "pretrain",
) -> Path:
    """WEIGHTS: the encoders of `recipe`'s model (its optimiser and seed) pretrained for
    `epochs` on LABELS over DATASET's train split (step `name`, stamped beside WEIGHTS)."""
    from symile_clinical.formats.checkpoint import file_sha256
    from symile_clinical.formats.run_config import config_to_dict
    from symile_clinical.training.pretrain import pretrain_encoders

    trained = config_to_dict(recipe)
    inputs = {
        "dataset": dataset.sha256(),
        "labels": file_sha256(labels),
        "epochs": epochs,
        **{key: trained[key] for key in PRETRAIN_RECIPE_KEYS},
    }

    def pretrain_step() -> None:
        pretrain_encoders(
            recipe,
            dataset,
            labels,
            weights,
            epochs=epochs,
            progress=progress,
            label_source=DERIVED_LABEL_SOURCE,
        )

    steps.at(weights.parent).run(name, inputs, weights, pretrain_step)
    return weights


def ensure_pretrained_encoders(
    recipe: TrainConfig,
    spec: CohortSpec,
    folder: Path,
    epochs: int,
    steps: Steps,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """FOLDER/encoders.pt: `recipe`'s encoders pretrained for `epochs` on the derived labels
    (`derived_labels`) of a separate cohort `spec` made in FOLDER (steps `pretrain-synth`,
    `pretrain-preprocess`, `labels`, `pretrain`), each unless current."""
    folder = Path(folder)
    dataset = ensure_cohort(spec, folder, steps, "pretrain-", workers, progress)
    labels = derived_labels(folder, dataset, steps)
    weights = folder / ENCODERS_FILE
    return pretrain_on_labels(recipe, dataset, labels, weights, epochs, steps, progress)


def ensure_own_split_encoders(
    recipe: TrainConfig, folder: Path, epochs: int, steps: Steps, progress: bool = False
) -> Path:
    """FOLDER/encoders-own.pt: `recipe`'s encoders pretrained on the derived labels of the
    measured cohort in FOLDER itself, its train split only (pretraining reads no other split's
    labels for training; the test split is never read)."""
    folder = Path(folder)
    dataset = DatasetDir(folder / "dataset")
    labels = derived_labels(folder, dataset, steps)
    weights = folder / OWN_ENCODERS_FILE
    return pretrain_on_labels(
        recipe, dataset, labels, weights, epochs, steps, progress, name="pretrain-own"
    )


def refuse_pretraining_on_measured(
    option: str, measured_seeds: Iterable[int], pretrain_seed: int, hint: str = ""
) -> None:
    """A UsageError (exit 2, naming `option`) when a measured cohort has the pretraining
    cohort's seed: the encoders would have seen that cohort's labels."""
    if pretrain_seed in set(measured_seeds):
        raise UsageError(
            option,
            f"cohort seed {pretrain_seed} is the pretraining cohort's seed: the encoders "
            f"would have seen that cohort's labels{hint}",
        )
