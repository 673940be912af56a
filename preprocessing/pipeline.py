"""The preprocessing pipeline: MIMIC root -> dataset directory (docs/formats.md).

Steps, each resumable:

1. validate the root (a missing table or column stops the run at once, naming it);
2. cohort: admissions joined with ECGs, CXRs and labs by time window (cohort.py);
3. decode: a process pool over shards of admissions reads each chosen ECG and CXR; a
   shard's tensors land in ``.work/shards/NNNNN/`` renamed into place only when complete,
   so a killed run resumes from the committed shards; a bad file becomes a quarantine row
   and never stops the run;
4. splits on the admissions that survived, lab CDFs fitted on train, candidate sets;
5. assembly: per split memmapped ``.npy`` arrays, manifest, candidates, quarantine,
   report, and dataset.json last (each written to a temporary name, then renamed).

Every admission ends in the tensors or in quarantine.csv, and the report's counts add up;
``reconcile`` checks it before anything is published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing import cohort as cohort_module
from preprocessing import layout, splits, tables
from preprocessing.cohort import CohortWindows
from preprocessing.cxr import DEFAULT_CXR_SIZE, load_cxr_image
from preprocessing.ecg import NORMALISATIONS, load_ecg_record, normalise_ecg
from preprocessing.errors import IncompatibleOutput, InvalidRecord
from preprocessing.labs import fit_lab_percentiles, observed_mask, percentiles_from_cdf
from preprocessing.quarantine import (
    quarantine_frame,
    reason_kind,
    write_atomic_text,
    write_quarantine,
)
from preprocessing.splits import SPLITS, SplitSizes

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
WORK_DIR = ".work"
ARRAY_CHUNK_ROWS = 256  # rows copied at a time when assembling a split's arrays


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything `preprocess` needs; built by the CLI (preprocessing/command.py)."""

    mimic_root: Path
    out: Path
    workers: int = 1
    cxr_size: int = DEFAULT_CXR_SIZE
    seed: int = 0
    ecg_normalisation: str = "minmax"
    lab_itemids: tuple[int, ...] | None = None  # None: the paper's 50 (lab_catalog)
    top_k_labs: int | None = None  # instead: the K labs most often observed in train
    windows: CohortWindows = field(default_factory=CohortWindows)
    split_sizes: SplitSizes = field(default_factory=SplitSizes)
    candidates: int = 10
    shard_size: int = 128
    hosp_dir: Path | None = None  # override <root>/mimic-iv/hosp
    ecg_dir: Path | None = None  # override <root>/mimic-iv-ecg
    cxr_dir: Path | None = None  # override <root>/mimic-cxr
    keep_work: bool = False
    progress: bool = True

    def fingerprint(self) -> str:
        """Hash of the settings that determine the output bytes (not workers, progress)."""
        settings = asdict(self)
        for key in ("out", "workers", "keep_work", "progress"):
            settings.pop(key)
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PreprocessReport:
    """What preprocess did: counts by stage and reason (they reconcile), sizes, timings."""

    out: Path
    counts: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        """preprocess_report.json content."""
        return {"counts": self.counts, "splits": self.splits, "timings_s": self.timings_s}


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class ShardTask:
    """One shard of admissions to decode: absolute file paths and where to commit."""

    index: int
    directory: str
    ecg_paths: tuple[str, ...]
    cxr_paths: tuple[str, ...]
    cxr_size: int
    ecg_normalisation: str


def decode_shard(task: ShardTask) -> int:
    """Decode a shard's ECGs and CXRs into .npy files and commit the folder atomically.

    Writes ecg.npy float16 [n, 12, 5000], cxr.npy uint8 [n, 1, S, S] (zeros where a file
    was rejected) and status.json (per row: null or {stage, kind, reason}). Returns the
    shard index.
    """
    final = Path(task.directory)
    if final.is_dir():
        return task.index
    staging = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    n = len(task.ecg_paths)
    ecg = np.lib.format.open_memmap(
        staging / "ecg.npy", mode="w+", dtype=np.float16, shape=(n, 12, layout.ECG_SAMPLES)
    )
    cxr = np.lib.format.open_memmap(
        staging / "cxr.npy", mode="w+", dtype=np.uint8, shape=(n, 1, task.cxr_size, task.cxr_size)
    )
    status: list[list[dict]] = []
    for row, (ecg_path, cxr_path) in enumerate(zip(task.ecg_paths, task.cxr_paths, strict=True)):
        problems = []
        try:
            signal = load_ecg_record(ecg_path)
            ecg[row] = normalise_ecg(signal, task.ecg_normalisation).astype(np.float16)
        except InvalidRecord as error:
            problems.append(_problem("ecg", error))
        except MemoryError:  # the machine's problem, not the file's: stop (resumable)
            raise
        except Exception as error:  # a rule no reader foresaw: one bad file never stops the run
            problems.append(_problem("ecg", _unexpected(ecg_path, error)))
        try:
            cxr[row] = load_cxr_image(cxr_path, task.cxr_size)
        except InvalidRecord as error:
            problems.append(_problem("cxr", error))
        except MemoryError:
            raise
        except Exception as error:
            problems.append(_problem("cxr", _unexpected(cxr_path, error)))
        status.append(problems)
    ecg.flush()
    cxr.flush()
    del ecg, cxr
    (staging / "status.json").write_text(json.dumps(status))
    try:
        os.replace(staging, final)  # the commit: a shard folder exists only when complete
    except OSError:  # another process committed the same shard first
        shutil.rmtree(staging, ignore_errors=True)
    return task.index


def _unexpected(path: str, error: Exception) -> InvalidRecord:
    """An error a reader did not anticipate (odd tags, decoder bugs) as a quarantine reason."""
    return InvalidRecord(path, f"{type(error).__name__}: {error}", kind="unexpected_error")


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
    return json.loads((directory / "status.json").read_text())


# --------------------------------------------------------------------------- helpers


def _lab_descriptions(itemids: Sequence[int], d_labitems: pd.DataFrame) -> dict[int, dict]:
    """Label, fluid and unit per itemid: the catalogue first, d_labitems for the rest."""
    from preprocessing.lab_catalog import lab_by_itemid

    table = d_labitems.set_index("itemid") if not d_labitems.empty else None
    out = {}
    for itemid in itemids:
        try:
            item = lab_by_itemid(itemid)
            out[int(itemid)] = {"label": item.label, "fluid": item.fluid, "unit": item.unit}
        except KeyError:
            if table is not None and itemid in table.index:
                row = table.loc[itemid]
                out[int(itemid)] = {"label": str(row["label"]), "fluid": str(row["fluid"])}
    return out


def _relative(path: Path, root: Path) -> str:
    """Path relative to the MIMIC root when inside it (quarantine's file column)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _write_array(path: Path, source: np.ndarray | None, shape: tuple, dtype, fill) -> None:
    """Write an .npy atomically: fill(memmap) writes the rows, then rename into place."""
    tmp = path.with_name(path.name + ".tmp")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    if source is not None:
        array[...] = source
    else:
        fill(array)
    array.flush()
    del array
    os.replace(tmp, path)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write parquet atomically."""
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _version() -> str:
    """The installed package version for dataset.json's created_by."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("symile-clinical")
    except PackageNotFoundError:
        return "0.1.0"


def reconcile(counts: dict) -> None:
    """Assert the report's counts add up; raises AssertionError naming the mismatch."""
    adm = counts["admissions"]
    excluded = sum(adm["excluded"].values())
    if adm["included"] + excluded != adm["total"]:
        raise AssertionError(f"admissions: {adm['included']} + {excluded} != {adm['total']}")
    for stage in ("ecg", "cxr"):
        files = counts[f"{stage}_files"]
        rejected = sum(files["rejected"].values())
        if files["ok"] + rejected != files["read"]:
            raise AssertionError(f"{stage} files: {files['ok']} + {rejected} != {files['read']}")


# --------------------------------------------------------------------------- the run


@dataclass
class CohortStage:
    """The cohort step's result: admissions to decode, their lab values, what was left out."""

    total_admissions: int
    kept: pd.DataFrame  # one row per admission to decode, cohort columns (cohort.py)
    lab_values: np.ndarray  # float64 [N, L], NaN where not observed
    itemids: list[int]
    scan: tables.LabScan
    d_labitems: pd.DataFrame
    quarantine_rows: list[dict]


def select_cohort(
    config: PreprocessConfig, paths: tables.RootPaths, found: dict[str, Path]
) -> CohortStage:
    """Read the tables, join them by time window; exclusions and malformed lab rows noted."""
    admissions = tables.read_admissions(found["admissions"])
    ecgs = tables.read_ecg_record_list(found["ecg_record_list"])
    if "cxr_metadata" in found:
        cxrs = tables.read_cxr_metadata(found["cxr_metadata"], found.get("cxr_record_list"))
    else:  # the MIMIC-CXR DICOM release: no metadata table, so read the DICOM headers
        cxrs = tables.cxr_metadata_from_headers(
            paths.cxr,
            found["cxr_record_list"],
            config.workers,
            config.progress,
            subject_ids=admissions["subject_id"].unique(),
        )
    ordered = cohort_module.sort_admissions(admissions.drop_duplicates("hadm_id"))
    candidates, excluded_modality = cohort_module.select_modalities(
        ordered, ecgs, cxrs, config.windows
    )
    if config.top_k_labs:
        wanted = None  # every lab, for the candidates' subjects; K chosen on train later
    else:
        from preprocessing.lab_catalog import PAPER_LAB_ITEMIDS

        wanted = tuple(config.lab_itemids or PAPER_LAB_ITEMIDS)
    scan = tables.scan_labevents(
        found["labevents"],
        wanted,
        subject_ids=candidates["subject_id"].unique(),
        progress=config.progress,
    )
    itemids = list(wanted) if wanted else sorted(int(i) for i in scan.numeric["itemid"].unique())
    kept, lab_values, excluded_labs = cohort_module.attach_labs(
        candidates, scan.numeric, itemids, config.windows
    )
    kept = kept.reset_index(drop=True)
    kept["cxr_path"] = tables.match_image_suffix(paths.cxr, kept["cxr_path"])

    rows: list[dict] = []
    for frame in (excluded_modality, excluded_labs):
        for hadm_id, reason in zip(frame["hadm_id"], frame["reason"], strict=True):
            rows.append(
                {
                    "id": hadm_id,
                    "file": "",
                    "stage": "cohort",
                    "reason": _cohort_reason(reason, config),
                }
            )
    labevents_file = _relative(found["labevents"], Path(config.mimic_root))
    malformed = scan.malformed
    for labevent_id, text in zip(malformed["labevent_id"], malformed["valuenum_text"], strict=True):
        reason = f"malformed_valuenum: valuenum {text!r} is not a number"
        rows.append({"id": labevent_id, "file": labevents_file, "stage": "labs", "reason": reason})
    return CohortStage(
        total_admissions=len(ordered),
        kept=kept,
        lab_values=lab_values,
        itemids=itemids,
        scan=scan,
        d_labitems=tables.read_d_labitems(found.get("d_labitems")),
        quarantine_rows=rows,
    )


def plan_shards(
    config: PreprocessConfig, paths: tables.RootPaths, kept: pd.DataFrame, work: Path
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
        "shard_size": config.shard_size,
        "cxr_size": config.cxr_size,
        "ecg_normalisation": config.ecg_normalisation,
    }
    plan_path = work / "plan.json"
    if plan_path.is_file() and json.loads(plan_path.read_text()) != plan:
        log.warning("%s holds shards of a different plan: starting over", work)
        shutil.rmtree(work)
    (work / "shards").mkdir(parents=True, exist_ok=True)
    write_atomic_text(plan_path, json.dumps(plan))
    ecg_files = [str(paths.ecg / p) for p in kept["ecg_path"]]
    cxr_files = [str(paths.cxr / p) for p in kept["cxr_path"]]
    size = config.shard_size
    return [
        ShardTask(
            index=i,
            directory=str(work / "shards" / f"{i:05d}"),
            ecg_paths=tuple(ecg_files[start : start + size]),
            cxr_paths=tuple(cxr_files[start : start + size]),
            cxr_size=config.cxr_size,
            ecg_normalisation=config.ecg_normalisation,
        )
        for i, start in enumerate(range(0, len(kept), size))
    ]


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
            file = _relative(Path(problem["file"] if problem else files[stage][row]), root)
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


def choose_top_k(
    itemids: list[int], observed_train: np.ndarray, k: int
) -> tuple[list[int], list[int]]:
    """The K labs most often observed in training (ties: lower itemid): itemids, columns."""
    counts = observed_train.sum(axis=0)
    order = sorted(range(len(itemids)), key=lambda c: (-counts[c], itemids[c]))
    columns = sorted(order[:k], key=lambda c: itemids[c])
    return [itemids[c] for c in columns], columns


def run_preprocess(config: PreprocessConfig) -> PreprocessReport:
    """Build the dataset directory from a MIMIC root; resumes a killed run; see module doc."""
    if config.ecg_normalisation not in NORMALISATIONS:
        raise ValueError(f"ECG normalisation must be one of {NORMALISATIONS}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out, root = Path(config.out), Path(config.mimic_root)
    paths = tables.RootPaths.from_root(root, config.hosp_dir, config.ecg_dir, config.cxr_dir)
    found = tables.validate_root(paths, root)  # a bad root stops here, before anything is written
    fingerprint = config.fingerprint()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "dataset.json").is_file():
        return _completed(out, fingerprint)

    tick = time.perf_counter()
    cohort = select_cohort(config, paths, found)
    timings["cohort"] = time.perf_counter() - tick

    tick = time.perf_counter()
    work = out / WORK_DIR
    tasks = plan_shards(config, paths, cohort.kept, work)
    decode_all(tasks, config.workers, config.progress)
    timings["decode"] = time.perf_counter() - tick

    tick = time.perf_counter()
    survived, file_counts, file_rows = file_outcomes(tasks, cohort.kept, root)
    included = cohort.kept.loc[survived].reset_index(drop=True)
    values = cohort.lab_values[survived]
    observed = np.isfinite(values)
    subjects = included["subject_id"].to_numpy()
    split_of = splits.assign_splits(subjects, config.split_sizes, config.seed)
    # Built before anything is written: a split too small for K candidates fails here.
    candidate_frame = splits.all_candidate_sets(
        {s: subjects[split_of == s] for s in SPLITS}, config.candidates, config.seed
    )
    train = split_of == "train"
    itemids = cohort.itemids
    if config.top_k_labs:
        itemids, columns = choose_top_k(itemids, observed[train], config.top_k_labs)
        values, observed = values[:, columns], observed[:, columns]
    descriptions = _lab_descriptions(itemids, cohort.d_labitems)
    labs_spec = fit_lab_percentiles(values[train], observed[train], itemids, descriptions)
    observed = observed_mask(values, labs_spec)
    percentiles = percentiles_from_cdf(values, observed, labs_spec)
    timings["splits_and_labs"] = time.perf_counter() - tick

    tick = time.perf_counter()
    split_sizes = write_split_arrays(
        out, tasks, survived, split_of, percentiles, observed, config.cxr_size
    )
    manifest = pd.concat(
        [_manifest(included.loc[split_of == s], s, observed[split_of == s]) for s in SPLITS],
        ignore_index=True,
    )
    _write_parquet(manifest, out / "manifest.parquet")
    _write_parquet(candidate_frame, out / "candidates.parquet")
    quarantine = quarantine_frame(cohort.quarantine_rows + file_rows)
    write_quarantine(quarantine, out / "quarantine.csv")
    timings["assemble"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started

    counts = _counts(cohort.total_admissions, len(included), quarantine, file_counts, cohort.scan)
    reconcile(counts)
    report = PreprocessReport(
        out, counts, split_sizes, {k: round(v, 3) for k, v in timings.items()}
    )
    write_atomic_text(out / "preprocess_report.json", json.dumps(report.as_json(), indent=2))
    dataset = _dataset_json(config, fingerprint, labs_spec, split_sizes)
    write_atomic_text(out / "dataset.json", json.dumps(dataset, indent=1))  # the commit
    if not config.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("dataset at %s: %s; %d quarantine rows", out, split_sizes, len(quarantine))
    return report


def _completed(out: Path, fingerprint: str) -> PreprocessReport:
    """A finished dataset of the same settings is returned as is; other settings refused."""
    previous = json.loads((out / "dataset.json").read_text())
    if previous.get("fingerprint") != fingerprint:
        raise IncompatibleOutput(
            f"{out} already holds a dataset built with other settings; choose a new --out"
        )
    log.info("%s is already complete", out)
    report = json.loads((out / "preprocess_report.json").read_text())
    return PreprocessReport(out, report["counts"], report["splits"], {})


def write_split_arrays(
    out: Path,
    tasks: Sequence[ShardTask],
    survived: np.ndarray,
    split_of: np.ndarray,
    percentiles: np.ndarray,
    observed: np.ndarray,
    cxr_size: int,
) -> dict[str, int]:
    """Write each split's ecg, cxr, labs and labs_observed arrays; returns the split sizes."""
    shard_of_row = np.repeat(np.arange(len(tasks)), [len(t.ecg_paths) for t in tasks])[survived]
    offsets = [np.arange(len(t.ecg_paths), dtype=np.int64) for t in tasks]
    offset_of_row = (np.concatenate(offsets) if offsets else np.zeros(0, np.int64))[survived]
    sizes = {}
    for split in SPLITS:
        members = np.flatnonzero(split_of == split)
        sizes[split] = int(members.size)
        directory = out / split
        directory.mkdir(exist_ok=True)
        _assemble_split(directory, tasks, shard_of_row[members], offset_of_row[members], cxr_size)
        labs = percentiles[members]
        _write_array(directory / "labs.npy", labs, labs.shape, np.float32, None)
        seen = observed[members].astype(np.uint8)
        _write_array(directory / "labs_observed.npy", seen, seen.shape, np.uint8, None)
    return sizes


def _dataset_json(
    config: PreprocessConfig, fingerprint: str, labs_spec: list[dict], split_sizes: dict
) -> dict:
    """dataset.json (docs/formats.md), plus the settings fingerprint and the source root."""
    paths = tables.RootPaths.from_root(
        Path(config.mimic_root), config.hosp_dir, config.ecg_dir, config.cxr_dir
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "created_by": f"symile-clinical {_version()}",
        "fingerprint": fingerprint,
        "seed": config.seed,
        "cxr_size": config.cxr_size,
        "ecg": {
            "sampling_hz": layout.ECG_SAMPLING_HZ,
            "samples": layout.ECG_SAMPLES,
            "leads": list(layout.CANONICAL_ECG_LEADS),
            "normalisation": config.ecg_normalisation,
            "units_before_normalisation": "mV",
        },
        "labs": labs_spec,
        "splits": split_sizes,
        "candidates_per_query": config.candidates,
        "cohort": config.windows.as_json(),
        "source": {
            "mimic_root": str(config.mimic_root),
            # The releases as read (--ecg-dir/--cxr-dir may place them outside the root):
            # manifest paths are relative to these.
            "ecg_dir": str(paths.ecg),
            "cxr_dir": str(paths.cxr),
        },
    }


def _cohort_reason(reason: str, config: PreprocessConfig) -> str:
    """Readable cohort exclusion reason with its window."""
    windows = config.windows
    text = {
        cohort_module.REASON_NO_ECG: f"no ECG within {list(windows.ecg_h)} h of admittime",
        cohort_module.REASON_NO_CXR: (
            f"no {'/'.join(windows.cxr_views)} CXR within {list(windows.cxr_h)} h of admittime"
        ),
        cohort_module.REASON_NO_LABS: f"no chosen lab within {list(windows.lab_h)} h of admittime",
    }[reason]
    return f"{reason}: {text}"


def _assemble_split(
    directory: Path,
    tasks: Sequence[ShardTask],
    shard_of_row: np.ndarray,
    offset_of_row: np.ndarray,
    cxr_size: int,
) -> None:
    """Copy a split's rows out of the shard arrays into ecg.npy and cxr.npy (memmaps)."""
    n = int(shard_of_row.size)

    def filler(name: str):
        def fill(array: np.ndarray) -> None:
            start = 0
            for shard in np.unique(shard_of_row):
                rows = offset_of_row[shard_of_row == shard]
                source = np.load(Path(tasks[shard].directory) / name, mmap_mode="r")
                for chunk in range(0, rows.size, ARRAY_CHUNK_ROWS):
                    part = rows[chunk : chunk + ARRAY_CHUNK_ROWS]
                    array[start : start + part.size] = source[part]
                    start += part.size

        return fill

    _write_array(
        directory / "ecg.npy", None, (n, 12, layout.ECG_SAMPLES), np.float16, filler("ecg.npy")
    )
    _write_array(
        directory / "cxr.npy", None, (n, 1, cxr_size, cxr_size), np.uint8, filler("cxr.npy")
    )


def _manifest(rows: pd.DataFrame, split: str, observed: np.ndarray) -> pd.DataFrame:
    """manifest.parquet rows of one split, in the columns and dtypes of docs/formats.md."""
    return pd.DataFrame(
        {
            "split": pd.Series([split] * len(rows), dtype=object),
            "row": np.arange(len(rows), dtype=np.int64),
            "subject_id": rows["subject_id"].to_numpy(dtype=np.int64),
            "hadm_id": rows["hadm_id"].to_numpy(dtype=np.int64),
            "ecg_study_id": rows["ecg_study_id"].to_numpy(dtype=np.int64),
            "ecg_path": rows["ecg_path"].astype(str).to_numpy(dtype=object),
            "ecg_time": rows["ecg_time"].to_numpy(dtype="datetime64[ns]"),
            "dicom_id": rows["dicom_id"].astype(str).to_numpy(dtype=object),
            "cxr_study_id": rows["cxr_study_id"].to_numpy(dtype=np.int64),
            "cxr_path": rows["cxr_path"].astype(str).to_numpy(dtype=object),
            "cxr_time": rows["cxr_time"].to_numpy(dtype="datetime64[ns]"),
            "admittime": rows["admittime"].to_numpy(dtype="datetime64[ns]"),
            "n_labs_observed": observed.sum(axis=1).astype(np.int64),
        }
    )


def _counts(
    total: int,
    included: int,
    quarantine: pd.DataFrame,
    file_counts: dict[str, Counter],
    scan: tables.LabScan,
) -> dict:
    """preprocess_report.json's counts: admissions, files and lab rows by stage and reason."""
    cohort_rows = quarantine[quarantine["stage"] == "cohort"]
    excluded = Counter(reason_kind(r) for r in cohort_rows["reason"])
    by_stage = {
        stage: dict(sorted(Counter(reason_kind(r) for r in rows["reason"]).items()))
        for stage, rows in quarantine.groupby("stage", sort=True)
    }
    files = {}
    for stage, counter in file_counts.items():
        rejected = {k: v for k, v in sorted(counter.items()) if k != "ok"}
        files[f"{stage}_files"] = {
            "read": int(sum(counter.values())),
            "ok": int(counter.get("ok", 0)),
            "rejected": rejected,
        }
    return {
        "admissions": {
            "total": total,
            "included": included,
            "excluded": dict(sorted(excluded.items())),
        },
        **files,
        "lab_rows": {
            "scanned": int(scan.rows_read),
            "kept_numeric": len(scan.numeric),
            "malformed": len(scan.malformed),
        },
        "quarantine_rows": {"total": len(quarantine), "by_stage_and_reason": by_stage},
    }
