"""The run directory (docs/formats.md): the one place its file names and rules live.

```
RUN/
  config.json  metrics.jsonl  compare.json  study_result.json  tensorboard/
  checkpoints/last.pt  checkpoints/last.prev.pt  checkpoints/best.pt
  index/   (symile_clinical.search.index)      report/   (symile_clinical.evaluation.report)
```

`RunDir` names every file, reads and writes config.json (which records the run's dataset
as an absolute path), picks a checkpoint, lists the runs it is compared with, and loads
the trained model (`load`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from models import ThreeModalityModel, build_model
from symile_clinical.errors import SymileClinicalError
from symile_clinical.formats.atomic import write_json_atomic
from symile_clinical.formats.checkpoint import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    previous_path,
)
from symile_clinical.formats.dataset_dir import DatasetDir
from symile_clinical.formats.folder import FormatDir
from symile_clinical.formats.run_config import (
    DATASET_KEY,
    TrainConfig,
    config_from_dict,
    read_config_json,
    write_config_json,
)

log = logging.getLogger(__name__)

# RUN/report/'s files (symile_clinical.evaluation.report writes them): metrics.json, written
# last (its presence: a whole report), and report.md, the report the app shows.
METRICS_FILE = "metrics.json"
MARKDOWN_FILE = "report.md"


class RunError(SymileClinicalError):
    """A run directory that cannot be used as asked (no dataset recorded, bad compare.json)."""


@dataclass
class LoadedRun:
    """A trained model ready to embed (eval mode) with the config that made it: a SymileModel,
    or the reference architecture for an imported run."""

    model: ThreeModalityModel
    config: TrainConfig
    objective: str
    run: RunDir
    checkpoint_path: Path
    checkpoint_sha256: str

    @property
    def run_dir(self) -> Path:
        """The run directory's absolute path."""
        return self.run.path


class RunDir(FormatDir):
    """A training run directory: its file names, config, checkpoints, dataset, comparisons.

    `path` is absolute, so a RunDir keeps meaning the same folder whatever the working
    directory becomes.
    """

    CONFIG = "config.json"
    CHECKPOINTS = "checkpoints"
    METRICS_LOG = "metrics.jsonl"
    TENSORBOARD = "tensorboard"
    INDEX = "index"
    REPORT = "report"
    COMPARE = "compare.json"
    STUDY_RESULT = "study_result.json"

    # ------------------------------------------------------------------ file names
    @property
    def config_path(self) -> Path:
        """RUN/config.json."""
        return self.path / self.CONFIG

    @property
    def checkpoints_dir(self) -> Path:
        """RUN/checkpoints/."""
        return self.path / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        """RUN/checkpoints/last.pt: the newest state, what a resume starts from."""
        return self.checkpoints_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        """RUN/checkpoints/best.pt: the epoch with the best val accuracy."""
        return self.checkpoints_dir / "best.pt"

    @property
    def metrics_log(self) -> Path:
        """RUN/metrics.jsonl."""
        return self.path / self.METRICS_LOG

    @property
    def tensorboard_dir(self) -> Path:
        """RUN/tensorboard/ (only when tensorboard is installed)."""
        return self.path / self.TENSORBOARD

    @property
    def index_dir(self) -> Path:
        """RUN/index/ (its files: symile_clinical.search.index)."""
        return self.path / self.INDEX

    @property
    def report_dir(self) -> Path:
        """RUN/report/ (its files: symile_clinical.evaluation.report)."""
        return self.path / self.REPORT

    @property
    def report_metrics(self) -> Path:
        """RUN/report/metrics.json, written last by `evaluate` (its presence: a whole report)."""
        return self.report_dir / METRICS_FILE

    @property
    def report_markdown(self) -> Path:
        """RUN/report/report.md, the report the app shows."""
        return self.report_dir / MARKDOWN_FILE

    @property
    def study_result(self) -> Path:
        """RUN/study_result.json: this run's test result as `symile-clinical study` measured it."""
        return self.path / self.STUDY_RESULT

    @property
    def compare_path(self) -> Path:
        """RUN/compare.json."""
        return self.path / self.COMPARE

    def has_checkpoint(self) -> bool:
        """Whether training has written a last.pt (or left its previous one)."""
        last = self.last_checkpoint
        return last.exists() or previous_path(last).exists()

    def checkpoint(self, which: str | os.PathLike[str] = "best") -> Path:
        """ "best" / "last" -> that checkpoint of this run; anything else is taken as a path.

        "best" falls back to last.pt (with a warning) when no epoch has finished validation.
        """
        if str(which) == "last":
            return self.last_checkpoint
        if str(which) == "best":
            if not self.best_checkpoint.exists() and self.last_checkpoint.exists():
                log.warning("%s has no best.pt yet; using last.pt", self.path)
                return self.last_checkpoint
            return self.best_checkpoint
        return Path(which)

    # ------------------------------------------------------------------ config.json
    def has_config(self) -> bool:
        """Whether config.json exists."""
        return self.config_path.is_file()

    def read_config(self) -> TrainConfig:
        """RUN/config.json as a TrainConfig (ConfigError naming the file when it is not one)."""
        values = read_config_json(self.config_path)
        return config_from_dict(values, source=str(self.config_path))

    def recorded_dataset(self) -> DatasetDir | None:
        """The dataset config.json records ("data"); None when it records none.

        New runs record an absolute path. A relative one (older runs) is taken relative to
        the run directory when it exists there, else to the working directory.
        """
        data = read_config_json(self.config_path).get(DATASET_KEY)
        if not data:
            return None
        path = Path(data)
        if not path.is_absolute() and (self.path / path).exists():
            path = self.path / path
        return DatasetDir(path)

    def dataset(self, override: str | os.PathLike[str] | DatasetDir | None = None) -> DatasetDir:
        """`override` when given, else the recorded dataset; RunError when there is neither."""
        if override is not None:
            return override if isinstance(override, DatasetDir) else DatasetDir(override)
        recorded = self.recorded_dataset()
        if recorded is None:
            raise RunError(self.config_path, "names no dataset: pass one (--data)")
        return recorded

    def write_config(self, config: TrainConfig, dataset: DatasetDir) -> None:
        """Write config.json atomically: the config plus the dataset's absolute path."""
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        write_config_json(self.config_path, config, dataset.path)

    # ------------------------------------------------------------------ compare.json
    def comparisons(self) -> list[tuple[str, RunDir]]:
        """(label, run) of each run named in compare.json; [] when there is none.

        compare.json is {"comparisons": [{"label": "CLIP", "run": "../clip"}]}, paths
        relative to RUN or absolute.
        """
        path = self.compare_path
        if not path.exists():
            return []
        try:
            entries = json.loads(path.read_text())["comparisons"]
            pairs = [(str(e.get("label", e["run"])), Path(e["run"])) for e in entries]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise RunError(path, f"unreadable compare.json ({error})") from error
        return [(label, RunDir(p if p.is_absolute() else self.path / p)) for label, p in pairs]

    def write_comparisons(self, comparisons: list[tuple[str, str | os.PathLike[str]]]) -> Path:
        """Write compare.json atomically, paths relative to RUN where possible."""
        entries = []
        for label, other in comparisons:
            target = Path(other).resolve()
            try:
                relative = os.path.relpath(target, self.path.resolve())
            except ValueError:  # another drive on Windows
                relative = str(target)
            entries.append({"label": label, "run": relative})
        return write_json_atomic(self.compare_path, {"comparisons": entries})

    # ------------------------------------------------------------------ the model
    def load(
        self, checkpoint: str | os.PathLike[str] = "best", device: str | torch.device = "cpu"
    ) -> LoadedRun:
        """This run's config and a checkpoint's weights in its model (config.model.arch's:
        a SymileModel, or the reference architecture) in eval mode."""
        config = self.read_config()
        path = self.checkpoint(checkpoint)
        state = load_checkpoint(path, map_location="cpu")
        model = build_model(config.model)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise CheckpointError(
                path, f"weights do not fit config.json's model: {error}"
            ) from error
        model.to(device).eval()
        return LoadedRun(
            model=model,
            config=config,
            objective=config.objective,
            run=self,
            checkpoint_path=path,
            checkpoint_sha256=file_sha256(path),
        )


def load_run(
    run_dir: str | os.PathLike[str] | RunDir,
    checkpoint: str | os.PathLike[str] = "best",
    device: str | torch.device = "cpu",
) -> LoadedRun:
    """`RunDir(run_dir).load(checkpoint, device)`."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return run.load(checkpoint, device)
