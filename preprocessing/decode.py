"""The decode stage: the cohort's ECG and CXR files into tensors, shard by shard.

The admissions to decode are cut into shards (`plan_shards`); a process pool decodes each
(`decode_shard`) into its own folder ``.work/shards/NNNNN/`` holding ecg.npy, cxr.npy and
status.json, renamed into place only when complete, so a killed run resumes from the
committed shards. A bad file becomes a problem in status.json (later a quarantine row) and
never stops the run; `file_outcomes` reads the committed shards back into survivors,
file counts and quarantine rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import layout
from preprocessing.cxr import load_cxr_image
from preprocessing.ecg import load_ecg_record, normalise_ecg, record_base
from preprocessing.errors import InvalidRecord
from preprocessing.mimic_tables import RootPaths
from symile_clinical.formats.atomic import atomic_directory, write_json_atomic

log = logging.getLogger(__name__)

# A shard folder's own files (internal to this stage; the dataset directory never holds them).
SHARD_ECG = "ecg.npy"
SHARD_CXR = "cxr.npy"
SHARD_STATUS = "status.json"
PLAN_FILE = "plan.json"
SHARDS_DIR = "shards"


@dataclass(frozen=True)
class ShardTask:
    """One shard of admissions to decode: absolute file paths and where to commit."""

    index: int
    directory: str
    ecg_paths: tuple[str, ...]
    cxr_paths: tuple[str, ...]
    cxr_size: int
    ecg_normalisation: str
    ecg_root: str = ""  # the release folders every file must resolve inside ("": unchecked)
    cxr_root: str = ""

    def __len__(self) -> int:
        return len(self.ecg_paths)


def plan_shards(
    kept: pd.DataFrame,
    paths: RootPaths,
    work: Path,
    shard_size: int,
    cxr_size: int,
    ecg_normalisation: str,
) -> list[ShardTask]:
    """Shard tasks over the admissions to decode; stale shards of another plan are removed.

    Shards depend only on the rows and on how files are decoded, so a rerun with other
    split, lab or candidate settings reuses them.
    """
    rows = kept[["hadm_id", "ecg_path", "cxr_path"]]
    plan = {
        "rows": hashlib.sha256(
            pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()
        ).hexdigest(),
        "paths": [str(paths.ecg), str(paths.cxr)],
        "shard_size": shard_size,
        "cxr_size": cxr_size,
        "ecg_normalisation": ecg_normalisation,
    }
    plan_path = work / PLAN_FILE
    if plan_path.is_file() and json.loads(plan_path.read_text()) != plan:
        log.warning("%s holds shards of a different plan: starting over", work)
        shutil.rmtree(work)
    (work / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_path, plan, indent=None)
    ecg_files = [str(paths.ecg / p) for p in kept["ecg_path"]]
    cxr_files = [str(paths.cxr / p) for p in kept["cxr_path"]]
    return [
        ShardTask(
            index=i,
            directory=str(work / SHARDS_DIR / f"{i:05d}"),
            ecg_paths=tuple(ecg_files[start : start + shard_size]),
            cxr_paths=tuple(cxr_files[start : start + shard_size]),
            cxr_size=cxr_size,
            ecg_normalisation=ecg_normalisation,
            ecg_root=str(paths.ecg),
            cxr_root=str(paths.cxr),
        )
        for i, start in enumerate(range(0, len(kept), shard_size))
    ]


def decode_shard(task: ShardTask) -> int:
    """Decode a shard's ECGs and CXRs into .npy files and commit the folder atomically.

    Writes ecg.npy float16 [n, 12, 5000], cxr.npy uint8 [n, 1, S, S] (zeros where a file
    was rejected) and status.json (per row: a list of {stage, kind, reason, file}). A shard
    another process committed first wins. Returns the shard index.
    """
    final = Path(task.directory)
    if final.is_dir():
        return task.index
    with atomic_directory(final, replace=False) as staging:
        n = len(task)
        ecg = np.lib.format.open_memmap(
            staging / SHARD_ECG, mode="w+", dtype=np.float16, shape=(n, 12, layout.ECG_SAMPLES)
        )
        cxr = np.lib.format.open_memmap(
            staging / SHARD_CXR,
            mode="w+",
            dtype=np.uint8,
            shape=(n, 1, task.cxr_size, task.cxr_size),
        )
        status: list[list[dict]] = []
        for row, (ecg_path, cxr_path) in enumerate(
            zip(task.ecg_paths, task.cxr_paths, strict=True)
        ):
            ecg_problem = _decode_file("ecg", ecg_path, lambda p: _ecg_row(p, task), ecg, row)
            cxr_problem = _decode_file("cxr", cxr_path, lambda p: _cxr_row(p, task), cxr, row)
            problems = [p for p in (ecg_problem, cxr_problem) if p is not None]
            status.append(problems)
        ecg.flush()
        cxr.flush()
        del ecg, cxr
        (staging / SHARD_STATUS).write_text(json.dumps(status))
    return task.index


def check_inside(path: Path, root: str) -> None:
    """Refuse (``path_outside_root``) a file whose path, ``..`` resolved, leaves `root`.

    Resolved as text (os.path.abspath), not by following links: a release folder that an
    administrator linked in from another disk (``files -> /data/...``) is still the release.
    """
    if root and not Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root)):
        raise InvalidRecord(path, "lies outside its release folder", kind="path_outside_root")


def _cxr_row(path: str, task: ShardTask) -> np.ndarray:
    """One CXR as its shard row: uint8 [1, S, S], the file checked to lie in the release."""
    check_inside(Path(path), task.cxr_root)
    return load_cxr_image(path, task.cxr_size)


def _ecg_row(path: str, task: ShardTask) -> np.ndarray:
    """One ECG record as its shard row: normalised, float16 [12, 5000]."""
    check_inside(Path(path).parent, task.ecg_root)
    check_inside(record_base(path).with_suffix(".hea"), task.ecg_root)
    return normalise_ecg(load_ecg_record(path), task.ecg_normalisation).astype(np.float16)


def _decode_file(
    stage: str, path: str, read: Callable[[str], np.ndarray], target: np.ndarray, row: int
) -> dict | None:
    """target[row] = read(path); the file's problem as status.json stores it, or None."""
    try:
        target[row] = read(path)
    except InvalidRecord as error:
        return _problem(stage, error)
    except MemoryError:  # the machine's problem, not the file's: stop (resumable)
        raise
    except Exception as error:  # a rule no reader foresaw: one bad file never stops the run
        unexpected = f"{type(error).__name__}: {error}"
        return _problem(stage, InvalidRecord(path, unexpected, kind="unexpected_error"))
    return None


def _problem(stage: str, error: InvalidRecord) -> dict:
    """A row's problem as status.json stores it (the file named is the one at fault)."""
    return {"stage": stage, "kind": error.kind, "reason": error.reason, "file": error.path}


def decode_all(tasks: Sequence[ShardTask], workers: int, progress: bool) -> None:
    """Decode every uncommitted shard, in a process pool when workers > 1."""
    from tqdm import tqdm

    todo = [task for task in tasks if not Path(task.directory).is_dir()]
    if len(todo) < len(tasks):
        log.info("resuming: %d of %d shards already committed", len(tasks) - len(todo), len(tasks))
    bar = tqdm(total=len(todo), desc="decode shards", unit="shard", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for task in todo:
            decode_shard(task)
            bar.update()
    else:
        # spawn: workers start clean (no inherited pyarrow/tqdm threads or locks).
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(decode_shard, task) for task in todo]):
                future.result()
                bar.update()
    bar.close()


def read_shard_status(directory: Path) -> list[list[dict]]:
    """Per-row problems of a committed shard."""
    return json.loads((Path(directory) / SHARD_STATUS).read_text())


def shard_array(task: ShardTask, name: str) -> np.ndarray:
    """A committed shard's "ecg" or "cxr" array, memory-mapped read-only."""
    return np.load(Path(task.directory) / {"ecg": SHARD_ECG, "cxr": SHARD_CXR}[name], mmap_mode="r")


def file_outcomes(
    tasks: Sequence[ShardTask], kept: pd.DataFrame, root: Path
) -> tuple[np.ndarray, dict[str, Counter], list[dict]]:
    """From the committed shards: survivor mask [N], file counts by outcome, quarantine rows.

    A file used by two admissions is counted once; an admission with a rejected file gets
    its own ``cohort`` row besides the file's row.
    """
    problems: list[list[dict]] = []
    for task in tasks:
        problems.extend(read_shard_status(Path(task.directory)))
    survived = np.array([not p for p in problems], dtype=bool)
    files = {
        "ecg": [p for t in tasks for p in t.ecg_paths],
        "cxr": [p for t in tasks for p in t.cxr_paths],
    }
    ids = {"ecg": kept["ecg_study_id"].tolist(), "cxr": kept["dicom_id"].tolist()}
    hadm_ids = kept["hadm_id"].tolist()
    outcome_of_file: dict[str, dict[str, dict | None]] = {"ecg": {}, "cxr": {}}
    rows: list[dict] = []
    for row, row_problems in enumerate(problems):
        failed = {p["stage"]: p for p in row_problems}
        for stage in ("ecg", "cxr"):
            problem = failed.get(stage)
            file = layout.relative_to_root(
                Path(problem["file"] if problem else files[stage][row]), root
            )
            outcome_of_file[stage][file] = problem
            if problem:
                reason = f"{problem['kind']}: {problem['reason']}"
                rows.append({"id": ids[stage][row], "file": file, "stage": stage, "reason": reason})
        if failed:
            first = "ecg" if "ecg" in failed else "cxr"
            reason = f"{first}_rejected: its {first.upper()} file was quarantined"
            rows.append({"id": hadm_ids[row], "file": "", "stage": "cohort", "reason": reason})
    counts = {
        stage: Counter("ok" if o is None else o["kind"] for o in outcomes.values())
        for stage, outcomes in outcome_of_file.items()
    }
    return survived, counts, rows
