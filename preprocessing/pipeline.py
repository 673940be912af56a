"""The preprocessing pipeline: MIMIC root -> dataset directory (docs/formats.md).

Steps, each resumable; each stage has its module:

1. validate the root (tables.py: a missing table or column stops the run at once);
2. cohort: admissions joined with ECGs, CXRs and labs by time window (cohort.py);
3. decode: a process pool over shards of admissions reads each chosen ECG and CXR into
   committed shard folders, so a killed run resumes; a bad file becomes a quarantine row
   and never stops the run (decode.py);
4. splits on the admissions that survived, lab CDFs fitted on train, candidate sets
   (splits.py, labs.py);
5. assembly: per split memmapped ``.npy`` arrays, manifest, candidates, quarantine,
   report, and dataset.json last, each written atomically (assemble.py).

Every admission ends in the tensors or in quarantine.csv, and the report's counts add up;
``report.reconcile`` checks it before anything is published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from preprocessing import layout, splits
from preprocessing import mimic_tables as tables
from preprocessing.assemble import (
    commit_dataset,
    manifest_frame,
    remove_stale_dataset_temporaries,
    write_report,
    write_split_arrays,
    write_tables,
)
from preprocessing.cohort import Cohort, CohortWindows, build_cohort
from preprocessing.cxr import DEFAULT_CXR_SIZE
from preprocessing.decode import decode_all, file_outcomes, plan_shards
from preprocessing.ecg import NORMALISATIONS
from preprocessing.errors import IncompatibleOutput, InvalidSettings
from preprocessing.lab_catalog import PAPER_LAB_ITEMIDS, lab_descriptions
from preprocessing.labs import (
    choose_top_k_labs,
    fit_lab_percentiles,
    observed_mask,
    percentiles_from_cdf,
)
from preprocessing.preprocess_report import PreprocessReport, count_outcomes, reconcile
from preprocessing.quarantine import (
    exclusion_rows,
    malformed_lab_rows,
    quarantine_frame,
    table_rows,
)
from preprocessing.splits import SplitSizes
from symile_clinical.formats.dataset_dir import SPLITS, DatasetDir

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
WORK_DIR = ".work"  # the decode stage's shards, removed once the dataset is committed


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything `preprocess` needs; built by the CLI (preprocessing/commands/preprocess.py)."""

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


def select_cohort(
    config: PreprocessConfig,
    paths: tables.RootPaths,
    found: dict[str, Path],
    problems: list[tables.RowProblem] | None = None,
) -> Cohort:
    """Read the tables and build the cohort (cohort.build_cohort); CXR paths as on disk.

    Table rows left out (tables.RowProblem) are appended to `problems`.
    """
    problems = [] if problems is None else problems
    admissions = tables.read_admissions(found["admissions"], problems)
    ecgs = tables.read_ecg_record_list(found["ecg_record_list"], problems)
    if "cxr_metadata" in found:
        cxrs = tables.read_cxr_metadata(
            found["cxr_metadata"], found.get("cxr_record_list"), problems
        )
    else:  # the MIMIC-CXR DICOM release: no metadata table, so read the DICOM headers
        cxrs = tables.cxr_metadata_from_headers(
            paths.cxr,
            found["cxr_record_list"],
            config.workers,
            config.progress,
            subject_ids=admissions["subject_id"].unique(),
            problems=problems,
        )
    # With top_k_labs: every lab, for the candidates' subjects; K are chosen on train later.
    wanted = None if config.top_k_labs else tuple(config.lab_itemids or PAPER_LAB_ITEMIDS)

    def scan_labs(subject_ids: np.ndarray) -> tables.LabScan:
        """The labevents pass, for the subjects that have an ECG and a CXR."""
        return tables.scan_labevents(
            found["labevents"], wanted, subject_ids=subject_ids, progress=config.progress
        )

    cohort = build_cohort(admissions, ecgs, cxrs, scan_labs, wanted, config.windows)
    cohort.admissions["cxr_path"] = tables.match_image_suffix(
        paths.cxr, cohort.admissions["cxr_path"]
    )
    return cohort


def run_preprocess(config: PreprocessConfig) -> PreprocessReport:
    """Build the dataset directory from a MIMIC root; resumes a killed run; see module doc."""
    if config.ecg_normalisation not in NORMALISATIONS:
        raise InvalidSettings("--ecg-normalisation", f"must be one of {NORMALISATIONS}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    dataset, root = DatasetDir(config.out), Path(config.mimic_root)
    paths = tables.RootPaths.from_root(root, config.hosp_dir, config.ecg_dir, config.cxr_dir)
    found = tables.validate_root(paths, root)  # a bad root stops here, before anything is written
    fingerprint = config.fingerprint()
    dataset.path.mkdir(parents=True, exist_ok=True)
    if dataset.is_complete():
        return _completed(dataset, Path(config.out), fingerprint)

    tick = time.perf_counter()
    table_problems: list[tables.RowProblem] = []
    cohort = select_cohort(config, paths, found, table_problems)
    labevents_file = layout.relative_to_root(found["labevents"], root)
    row_problems = table_problems + cohort.lab_scan.problems
    cohort_rows = (
        exclusion_rows(cohort.excluded, config.windows)
        + malformed_lab_rows(cohort.lab_scan.malformed, labevents_file)
        + table_rows(row_problems, root, found["labevents"])
    )
    timings["cohort"] = time.perf_counter() - tick

    # Before any decoding: a split that could not serve 2 candidates even if every file
    # decodes is refused now, with the sizes that would work.
    planned = cohort.admissions["subject_id"].to_numpy()
    planned_split = splits.assign_splits(planned, config.split_sizes, config.seed)
    planned_by_split = {s: planned[planned_split == s] for s in SPLITS}
    splits.candidates_per_split(planned_by_split, config.candidates, warn=False)

    tick = time.perf_counter()
    work = dataset.path / WORK_DIR
    tasks = plan_shards(
        cohort.admissions,
        paths,
        work,
        config.shard_size,
        config.cxr_size,
        config.ecg_normalisation,
    )
    decode_all(tasks, config.workers, config.progress)
    timings["decode"] = time.perf_counter() - tick

    tick = time.perf_counter()
    survived, file_counts, file_rows = file_outcomes(tasks, cohort.admissions, root)
    included = cohort.admissions.loc[survived].reset_index(drop=True)
    values = cohort.lab_values[survived]
    observed = np.isfinite(values)
    subjects = included["subject_id"].to_numpy()
    split_of = splits.assign_splits(subjects, config.split_sizes, config.seed)
    # Built before anything is written; a split too small for K gets fewer (warned).
    by_split = {s: subjects[split_of == s] for s in SPLITS}
    candidates = splits.candidates_per_split(by_split, config.candidates)
    candidate_frame = splits.all_candidate_sets(by_split, candidates, config.seed)
    train = split_of == "train"
    itemids = cohort.lab_itemids
    if config.top_k_labs:
        itemids, columns = choose_top_k_labs(itemids, observed[train], config.top_k_labs)
        values, observed = values[:, columns], observed[:, columns]
    d_labitems = tables.read_d_labitems(found.get("d_labitems"))
    descriptions = lab_descriptions(itemids, d_labitems)
    labs_spec = fit_lab_percentiles(values[train], observed[train], itemids, descriptions)
    observed = observed_mask(values, labs_spec)
    percentiles = percentiles_from_cdf(values, observed, labs_spec)
    timings["splits_and_labs"] = time.perf_counter() - tick

    tick = time.perf_counter()
    remove_stale_dataset_temporaries(dataset)
    split_sizes = write_split_arrays(
        dataset, tasks, survived, split_of, percentiles, observed, config.cxr_size
    )
    quarantine = quarantine_frame(cohort_rows + file_rows)
    write_tables(dataset, manifest_frame(included, split_of, observed), candidate_frame, quarantine)
    timings["assemble"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started

    counts = count_outcomes(
        cohort.total_admissions,
        len(included),
        quarantine,
        file_counts,
        cohort.lab_scan,
        table_problems=len(table_problems),
    )
    reconcile(counts)
    report = PreprocessReport(
        Path(config.out), counts, split_sizes, {k: round(v, 3) for k, v in timings.items()}
    )
    write_report(dataset, report.as_json())
    commit_dataset(dataset, _dataset_json(config, fingerprint, labs_spec, split_sizes, candidates))
    if not config.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("dataset at %s: %s; %d quarantine rows", config.out, split_sizes, len(quarantine))
    return report


def _completed(dataset: DatasetDir, out: Path, fingerprint: str) -> PreprocessReport:
    """A finished dataset of the same settings is returned as is; other settings refused."""
    if dataset.info.get("fingerprint") != fingerprint:
        raise IncompatibleOutput(
            out, "already holds a dataset built with other settings; choose a new --out"
        )
    log.info("%s is already complete", out)
    report = json.loads(dataset.report_path.read_text())
    return PreprocessReport(out, report["counts"], report["splits"], {})


def _dataset_json(
    config: PreprocessConfig,
    fingerprint: str,
    labs_spec: list[dict],
    split_sizes: dict,
    candidates: dict[str, int],
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
        # K of each evaluation split: fewer than asked where a small split cannot serve it.
        "candidates_per_split": candidates,
        "cohort": config.windows.as_json(),
        "source": {
            "mimic_root": str(config.mimic_root),
            # The releases as read (--ecg-dir/--cxr-dir may place them outside the root):
            # manifest paths are relative to these.
            "ecg_dir": str(paths.ecg),
            "cxr_dir": str(paths.cxr),
        },
    }


def _version() -> str:
    """The installed package version for dataset.json's created_by."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("symile-clinical")
    except PackageNotFoundError:
        return "0.1.0"
