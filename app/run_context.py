"""What the app serves from: a trained run, its candidate index, its dataset, its comparisons.

The run directory is read through `symile_clinical.runs.RunDir` (its model, its dataset,
the runs compare.json names), the dataset through `symile_clinical.dataset_dir.DatasetDir`
(the split the index covers, its manifest, candidate sets and lab list) and the index
through `symile_clinical.index`: this module names none of their files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.errors import AppError
from symile_clinical.dataset_dir import CandidateSets, DatasetDir, DatasetError, SplitArrays
from symile_clinical.errors import SymileClinicalError
from symile_clinical.index import CandidateIndex, IndexConfig, ensure_index
from symile_clinical.runs import LoadedRun, RunDir

log = logging.getLogger(__name__)

RUN_ENV = "SYMILE_CLINICAL_RUN"


class RunUnavailableError(AppError):
    """The run the app was pointed at cannot be served; `path` is the run directory."""


@dataclass
class RunContext:
    """A loaded run with its index and the dataset split the index covers."""

    label: str
    run: LoadedRun
    index: CandidateIndex
    dataset: DatasetDir
    arrays: SplitArrays  # the index's split
    manifest: pd.DataFrame  # that split's manifest rows, ordered by row
    candidates: CandidateSets | None  # the paper's candidate sets for that split, if saved
    index_rebuilt: bool = False
    comparisons: list[RunContext] = field(default_factory=list)

    @property
    def objective(self) -> str:
        """'symile' or 'clip'."""
        return self.run.objective

    @property
    def logit_scale(self) -> float:
        """exp of the learned log scale: what softmax probabilities are computed with."""
        return float(self.run.model.logit_scale.detach().exp())

    @property
    def labs_spec(self) -> list[dict[str, Any]]:
        """The dataset's lab list (the column order of labs arrays)."""
        return self.dataset.labs_spec

    @property
    def fill(self) -> np.ndarray:
        """float32 [L] percentile a missing lab is filled with."""
        return self.dataset.fill_values

    @property
    def ecg_info(self) -> dict[str, Any]:
        """The dataset's ECG settings: sampling_hz, normalisation, ..."""
        return dict(self.dataset.info["ecg"])

    def paper_pool(self, row: int) -> np.ndarray | None:
        """Index positions of the saved candidate set of a query row, or None."""
        if self.candidates is None or len(self.candidates) == 0:
            return None
        hit = np.flatnonzero(self.candidates.query_rows == row)
        if len(hit) == 0:
            return None
        return self.index.positions_of_rows(self.candidates.candidate_rows[hit[0]])


def run_dir_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> Path | None:
    """`--run RUN` from the script's arguments (`streamlit run app.py -- --run RUN`), else
    the SYMILE_CLINICAL_RUN environment variable, else None."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--run" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--run="):
            return Path(arg.split("=", 1)[1])
    value = environ.get(RUN_ENV)
    return Path(value) if value else None


def _candidate_sets(dataset: DatasetDir, split: str) -> CandidateSets | None:
    """The split's saved candidate sets, or None (with a warning) when the dataset has none."""
    try:
        return dataset.candidates(split)
    except DatasetError as error:
        log.warning("no paper candidate sets: %s", error.reason)
        return None


def open_run(
    run_dir: Path | str | RunDir,
    checkpoint: str = "best",
    label: str | None = None,
    with_comparisons: bool = True,
    split: str = "test",
) -> RunContext:
    """Load a run's model, its current index (rebuilt when missing or stale) and dataset.

    Any reason the run cannot be served is a RunUnavailableError naming the run directory.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not run_dir.path.is_dir():
        raise RunUnavailableError(run_dir.path, "no such run directory")
    try:
        run = run_dir.load(checkpoint)
        dataset = run_dir.dataset()
        config = IndexConfig(run_dir=run_dir.path, data_dir=dataset.path, split=split)
        index, rebuilt = ensure_index(run, config, progress=False)
        split = str(index.info["split"])
        arrays = dataset.split(split)
        manifest = dataset.manifest(split)
        comparisons = run_dir.comparisons() if with_comparisons else []
    except SymileClinicalError as error:
        raise RunUnavailableError(run_dir.path, str(error)) from error
    context = RunContext(
        label=label or run.objective.upper().replace("SYMILE", "Symile"),
        run=run,
        index=index,
        dataset=dataset,
        arrays=arrays,
        manifest=manifest,
        candidates=_candidate_sets(dataset, split),
        index_rebuilt=rebuilt,
    )
    for other_label, other in comparisons:
        context.comparisons.append(
            open_run(other, label=other_label, with_comparisons=False, split=split)
        )
    return context
