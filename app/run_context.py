"""What the app serves from: a trained run, its candidate index, its dataset, its comparisons.

A run names the runs it is compared with in ``RUN/compare.json``::

    {"comparisons": [{"label": "CLIP", "run": "../clip"}]}

(paths relative to RUN, or absolute). `symile-clinical demo` writes it for the Symile run
with the CLIP run trained beside it; the app then shows both rankings side by side.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from symile_clinical.data import (
    CandidateSets,
    DatasetError,
    SplitArrays,
    fill_percentiles,
    load_candidate_sets,
    read_dataset_json,
)
from symile_clinical.index import CandidateIndex, IndexConfig, ensure_index, run_dataset_dir
from symile_clinical.runs import LoadedRun, load_run

log = logging.getLogger(__name__)

COMPARE_FILE = "compare.json"
RUN_ENV = "SYMILE_CLINICAL_RUN"


class RunUnavailableError(Exception):
    """The run the app was pointed at cannot be served; carries the path and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class RunContext:
    """A loaded run with its index and the dataset split the index covers."""

    label: str
    run: LoadedRun
    index: CandidateIndex
    data_dir: Path
    dataset: dict[str, Any]  # dataset.json
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
        """dataset.json's lab list (the column order of labs arrays)."""
        return list(self.dataset["labs"])

    @property
    def fill(self) -> np.ndarray:
        """float32 [L] percentile a missing lab is filled with."""
        return fill_percentiles(self.dataset)

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


def read_comparisons(run_dir: Path | str) -> list[tuple[str, Path]]:
    """(label, run dir) of each comparison run named in RUN/compare.json; [] if none."""
    path = Path(run_dir) / COMPARE_FILE
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())["comparisons"]
        pairs = [(str(e.get("label", e["run"])), Path(e["run"])) for e in entries]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise RunUnavailableError(path, f"unreadable compare.json ({error})") from error
    return [(label, p if p.is_absolute() else Path(run_dir) / p) for label, p in pairs]


def write_comparisons(run_dir: Path | str, comparisons: Sequence[tuple[str, Path]]) -> Path:
    """Write RUN/compare.json atomically, paths relative to RUN where possible."""
    run_dir = Path(run_dir)
    entries = []
    for label, other in comparisons:
        try:
            relative = os.path.relpath(Path(other).resolve(), run_dir.resolve())
        except ValueError:  # another drive on Windows
            relative = str(Path(other).resolve())
        entries.append({"label": label, "run": relative})
    with tempfile.NamedTemporaryFile("w", dir=run_dir, suffix=".tmp", delete=False) as tmp:
        json.dump({"comparisons": entries}, tmp, indent=2)
    os.replace(tmp.name, run_dir / COMPARE_FILE)
    return run_dir / COMPARE_FILE


def split_manifest(data_dir: Path, split: str) -> pd.DataFrame:
    """Manifest rows of a split, ordered by row (row i of the arrays is line i)."""
    manifest = pd.read_parquet(data_dir / "manifest.parquet")
    return manifest[manifest["split"] == split].sort_values("row").reset_index(drop=True)


def open_run(
    run_dir: Path | str,
    checkpoint: str = "best",
    label: str | None = None,
    with_comparisons: bool = True,
    split: str = "test",
) -> RunContext:
    """Load a run's model, its current index (rebuilt when missing or stale) and dataset."""
    from symile_clinical.checkpoint import CheckpointError
    from symile_clinical.config import ConfigError
    from symile_clinical.index import CandidateIndexError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunUnavailableError(run_dir, "no such run directory")
    try:
        run = load_run(run_dir, checkpoint=checkpoint)
        data_dir = run_dataset_dir(run)
        index, rebuilt = ensure_index(
            run, IndexConfig(run_dir=run_dir, data_dir=data_dir, split=split), progress=False
        )
        split = str(index.info["split"])
        dataset = read_dataset_json(data_dir)
        arrays = SplitArrays(data_dir, split)
        manifest = split_manifest(data_dir, split)
    except (CheckpointError, ConfigError, DatasetError, CandidateIndexError) as error:
        raise RunUnavailableError(run_dir, str(error)) from error
    try:
        candidates = load_candidate_sets(data_dir, split)
    except DatasetError as error:
        log.warning("no paper candidate sets: %s", error.reason)
        candidates = None
    context = RunContext(
        label=label or run.objective.upper().replace("SYMILE", "Symile"),
        run=run,
        index=index,
        data_dir=data_dir,
        dataset=dataset,
        arrays=arrays,
        manifest=manifest,
        candidates=candidates,
        index_rebuilt=rebuilt,
    )
    if with_comparisons:
        for other_label, other_dir in read_comparisons(run_dir):
            context.comparisons.append(
                open_run(other_dir, label=other_label, with_comparisons=False, split=split)
            )
    return context
