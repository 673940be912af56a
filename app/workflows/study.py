"""`symile-clinical study`: the joint-fraction experiment end to end, Symile against CLIP.

The workflow: cohorts, pretraining and the scheduling of the study's cells.

- For each joint fraction F and cohort seed, a synthetic cohort is synthesised and
  preprocessed (OUT/cohorts/F<F>_c<seed>/mimic, .../dataset) by app.workflows.cohort, the
  builder and "up to date" rule the demo uses too;
- with `pretrain` (or a `derived` start), the encoders are first pretrained on labels derived
  from MIMIC's label sources (`symile-clinical labels`), of a separate cohort (OUT/pretrain/,
  seed PRETRAIN_SEED, F PRETRAIN_FRACTION) or of each measured cohort's own train split
  (`pretrain_on`), again by app.workflows.cohort; several `starts` (random, derived, a
  weights file such as the oracle's) are measured side by side, one curve each;
- every cell (a cohort, an objective with its recipe, a training seed) is trained and its
  best checkpoint (chosen on val by the trainer) measured once on the test split by
  symile_clinical.experiments.study_cells.run_cell, in `jobs` processes side by side;
- the summary and the report (OUT/report/: markdown, HTML, PNG) come from
  experiments.study_cells and experiments.study_report.

It lives in app/ because it makes cohorts, and symile_clinical may not import preprocessing.
Resumable: a current cohort or encoders file is kept, a cell whose study_result.json exists
is read back, and a killed training resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.workflows.cohort import (
    PRETRAIN_FRACTION,
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
from symile_clinical.formats.dataset_dir import DatasetDir

if TYPE_CHECKING:
    from symile_clinical.experiments.study_cells import StudyCell

log = logging.getLogger(__name__)

# Each objective's recipe: a preset name of symile_clinical.training.config (chosen on
# validation by benchmarks/recipe_search.py; docs/diagnosis.md).
# Each objective's own recipe; the study runs `objectives` (Symile and CLIP by default).
RECIPES = {
    "symile": "demo",
    "clip": "demo-clip",
    "gram": "demo-gram",
    "triangle": "demo-triangle",
    "gated-symile": "demo-gated-symile",
}
DEFAULT_RECIPES = {objective: RECIPES[objective] for objective in ("symile", "clip")}


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
    # Make them first, pretrained on labels derived from MIMIC-format label sources: each
    # measured cohort's own train split by default, or a separate cohort (OUT/pretrain/, seed
    # PRETRAIN_SEED, F PRETRAIN_FRACTION) with pretrain_on="separate"
    pretrain: bool = False
    pretrain_epochs: int = 20
    # Where pretraining learns (cohort.PRETRAIN_SOURCES): each measured cohort's "own" train
    # split (chosen on validation: benchmarks/pretrain_source.py) or a "separate" hospital;
    # labels derived from MIMIC's label sources either way.
    pretrain_on: str = "own"
    # Several encoder starts side by side, one curve each: name -> "random", "derived"
    # (pretrained on derived labels as `pretrain_on` says) or a weights file. Empty: the one
    # start that `encoder_weights` / `pretrain` give (random when neither).
    starts: dict[str, str] = field(default_factory=dict)
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

    def cohort(self, fraction: float, cohort_seed: int) -> CohortSpec:
        """The cohort of one joint fraction and cohort seed."""
        return CohortSpec(self.admissions, cohort_seed, fraction, self.cxr_max_size, self.cxr_size)


def cohort_dir(config: StudyConfig, fraction: float, cohort_seed: int) -> Path:
    """OUT/cohorts/F<F>_c<seed>."""
    return Path(config.out) / "cohorts" / f"F{fraction:g}_c{cohort_seed}"


def ensure_study_cohort(
    config: StudyConfig, fraction: float, cohort_seed: int, steps: Steps
) -> DatasetDir:
    """The cohort of (F, cohort seed) in `cohort_dir`, made unless current."""
    folder = cohort_dir(config, fraction, cohort_seed)
    return ensure_cohort(
        config.cohort(fraction, cohort_seed), folder, steps, f"{folder.name}/", max(1, config.jobs)
    )


def pretrained_encoders(config: StudyConfig, steps: Steps) -> Path:
    """OUT/pretrain/encoders.pt: the Symile recipe's encoders (training seed 0) pretrained
    on the findings of a separate cohort (seed PRETRAIN_SEED, F PRETRAIN_FRACTION), made
    unless current."""
    from symile_clinical.training.config import load_config

    recipe = dataclasses.replace(load_config(config.recipes["symile"]), seed=0)
    return ensure_pretrained_encoders(
        recipe,
        config.cohort(PRETRAIN_FRACTION, PRETRAIN_SEED),
        Path(config.out) / "pretrain",
        config.pretrain_epochs,
        steps,
        max(1, config.jobs),
        config.progress,
    )


def own_split_encoders(config: StudyConfig, folder: Path, steps: Steps) -> Path:
    """FOLDER/encoders-own.pt: the Symile recipe's encoders (training seed 0) pretrained on
    the derived labels of the measured cohort in FOLDER, its train split only."""
    from symile_clinical.training.config import load_config

    recipe = dataclasses.replace(load_config(config.recipes["symile"]), seed=0)
    return ensure_own_split_encoders(recipe, folder, config.pretrain_epochs, steps)


def named_starts(config: StudyConfig) -> dict[str, str]:
    """The encoder starts to measure: `starts`, or the one given by the older options."""
    if config.starts:
        if config.pretrain or config.encoder_weights is not None:
            raise UsageError("--start", "replaces --pretrain and --encoder-weights: use one")
        for name, spec in config.starts.items():
            if not name or "/" in name:
                raise UsageError("--start", f"{name!r}: a name without '/' is needed")
            if spec not in ("random", "derived") and not Path(spec).is_file():
                raise UsageError("--start", f"{name}={spec}: random, derived or a weights file")
        return dict(config.starts)
    if config.pretrain:
        if config.encoder_weights is not None:
            raise UsageError("--pretrain", "makes the encoder weights: drop --encoder-weights")
        return {"": "derived"}
    return {"": str(config.encoder_weights) if config.encoder_weights else "random"}


def start_weights(config: StudyConfig, spec: str, cohort_folder: Path, steps: Steps) -> Path | None:
    """The weights file a start gives the runs of one cohort (None: random encoders)."""
    if spec == "random":
        return None
    if spec != "derived":
        return Path(spec)
    if config.pretrain_on == "own":
        return own_split_encoders(config, cohort_folder, steps)
    return pretrained_encoders(config, steps)


def _check_weights_fit(config: StudyConfig, steps: Steps, weights: Path) -> None:
    """Every recipe's model takes the encoder weights (a ConfigError naming the file and the
    encoder otherwise, exit 1), before any cell trains."""
    from models import WeightsError, build_model
    from symile_clinical.formats.run_config import ConfigError
    from symile_clinical.training.config import fit_model_to_data, load_config

    first = ensure_study_cohort(config, config.fractions[0], config.cohort_seeds[0], steps)
    train = first.split("train")
    for recipe in config.recipes.values():
        model = fit_model_to_data(load_config(recipe), train).model
        try:
            build_model(model, seed=0, encoder_weights=Path(weights))
        except WeightsError as error:
            raise ConfigError(error.path, f"{error.reason} (recipe {recipe})") from error


def run_cells(
    cells: Sequence[tuple[StudyCell, Path, str | None]],
    runs_root: Path,
    jobs: int,
    max_steps: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every (cell, dataset, encoder weights or None) in `jobs` spawned processes (1 torch
    thread each), with a tqdm bar; finished cells are read back, so a killed study resumes
    where it stopped. Results come in the order of `cells`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    from symile_clinical.experiments.study_cells import run_cell

    bar = tqdm(total=len(cells), desc="study", unit="run", disable=not progress)
    results: list[dict[str, Any]] = []
    if jobs <= 1:
        for cell, dataset, weights in cells:
            results.append(run_cell(cell, dataset, runs_root, max_steps, weights))
            bar.update(1)
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(run_cell, c, d, runs_root, max_steps, w) for c, d, w in cells]
            for future in as_completed(futures):
                future.result()  # a failed cell is raised as soon as it fails
                bar.update(1)
            results = [future.result() for future in futures]
    bar.close()
    return results


def run_study(config: StudyConfig, command: str = "symile-clinical study") -> dict[str, Any]:
    """Cohorts, every cell, the report; returns {"summary", "files", "results"}."""
    from symile_clinical.experiments.study_cells import StudyCell, summarise_study
    from symile_clinical.experiments.study_report import write_study_report

    steps = Steps(Path(config.out))
    if config.pretrain_on not in PRETRAIN_SOURCES:
        raise UsageError("--pretrain-on", f"one of {', '.join(PRETRAIN_SOURCES)}")
    starts = named_starts(config)
    if "derived" in starts.values() and config.pretrain_on == "separate":
        refuse_pretraining_on_measured(
            "--cohort-seeds",
            config.cohort_seeds,
            PRETRAIN_SEED,
            f" (use at most {PRETRAIN_SEED} cohort seeds with separate pretraining)",
        )

    cells = []
    checked: set[Path] = set()
    for fraction in config.fractions:
        for cohort_seed in config.cohort_seeds:
            dataset = ensure_study_cohort(config, fraction, cohort_seed, steps)
            folder = cohort_dir(config, fraction, cohort_seed)
            for name, spec in starts.items():
                weights = start_weights(config, spec, folder, steps)
                if weights is not None and weights.resolve() not in checked:
                    _check_weights_fit(config, steps, weights)
                    checked.add(weights.resolve())
                weights_path = str(weights.resolve()) if weights is not None else None
                for objective, recipe in config.recipes.items():
                    for seed in config.seeds:
                        cell = StudyCell(fraction, cohort_seed, objective, recipe, seed, name)
                        cells.append((cell, dataset.path, weights_path))
    runs = Path(config.out) / "runs"
    results = run_cells(cells, runs, config.jobs, config.max_steps, config.progress)
    summary = summarise_study(results)
    files = write_study_report(config.out, summary, command)
    log.info("study: report in %s", files["markdown"])
    return {"summary": summary, "files": files, "results": results}
