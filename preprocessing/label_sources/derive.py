"""Assemble the labels CSV `pretrain --labels` reads from MIMIC's own label sources.

For each admission of a dataset's manifest: its chosen ECG's machine statements
(ecg_statements), the high/low flags of its lab panel (lab_flags), its CXR study's CheXpert
or NegBio labels (chexpert) and report (radiology_reports). Output: `hadm_id` and one
`<modality>:<finding>` column per finding, values 1, 0 or empty (docs/formats.md). Reads
nothing but the releases and the dataset directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from preprocessing import layout
from preprocessing.cohort import CohortWindows
from preprocessing.errors import InvalidTable
from preprocessing.lab_catalog import LAB_ITEMS
from preprocessing.label_sources import chexpert, ecg_statements, lab_flags, radiology_reports
from preprocessing.label_sources.source_files import find_source, finding_name
from preprocessing.mimic_tables import RootPaths
from symile_clinical.formats.atomic import atomic_path
from symile_clinical.formats.dataset_dir import DatasetDir

logger = logging.getLogger(__name__)
MANIFEST_NEEDED = ("subject_id", "hadm_id", "ecg_study_id", "cxr_study_id", "admittime")
_SPECIMEN_QUALITY = {item.itemid for item in LAB_ITEMS if item.specimen_quality}
# Hours around admission, for a dataset that does not record its own (the cohort's default).
DEFAULT_LAB_WINDOW_H = CohortWindows().lab_h


@dataclass(frozen=True)
class LabelsConfig:
    """Where the releases and the dataset are, where to write, and the label policies."""

    mimic_root: Path
    dataset: Path
    out: Path
    uncertainty: str = "ignore"  # CheXpert -1.0 and hedged report mentions: ignore|ones|zeros
    cxr_labeler: str = "chexpert"  # chexpert | negbio
    phrase_table: Path = ecg_statements.PHRASE_TABLE
    hosp_dir: Path | None = None
    ecg_dir: Path | None = None
    cxr_dir: Path | None = None


@dataclass
class LabelsSummary:
    """Per finding: admissions labelled (1 or 0) and prevalence among them."""

    admissions: int
    labelled: dict[str, int] = field(default_factory=dict)
    prevalence: dict[str, float] = field(default_factory=dict)


def _manifest(dataset: Path) -> tuple[pd.DataFrame, tuple[float, float], list[tuple[int, str]]]:
    directory = DatasetDir(dataset)
    path = directory.manifest_path
    if not path.is_file():
        raise InvalidTable(path, "not found: is --dataset a dataset directory?")
    manifest = pd.read_parquet(path)
    missing = [c for c in MANIFEST_NEEDED if c not in manifest]
    if missing:
        raise InvalidTable(path, f"has no column {missing[0]!r}")
    info = directory.info
    recorded = info.get("cohort", {}).get("lab_window_h")
    if recorded is None:
        logger.warning(
            "%s records no lab window (dataset.json cohort.lab_window_h): lab flags are read "
            "in the assumed window (%g, %g) h around admission",
            directory.path,
            *DEFAULT_LAB_WINDOW_H,
        )
    window = tuple(recorded if recorded is not None else DEFAULT_LAB_WINDOW_H)
    labs = [
        (int(lab["itemid"]), finding_name(str(lab.get("label", lab["itemid"]))))
        for lab in directory.labs_spec
        if int(lab["itemid"]) not in _SPECIMEN_QUALITY
    ]
    manifest = manifest.sort_values(["split", "row"] if "row" in manifest else "hadm_id")
    manifest = manifest.drop_duplicates("hadm_id").reset_index(drop=True)
    manifest["admittime"] = pd.to_datetime(manifest["admittime"])
    return manifest, (float(window[0]), float(window[1])), labs


def derive_labels(config: LabelsConfig) -> pd.DataFrame:
    """The labels frame: hadm_id and `<modality>:<finding>` columns (1.0, 0.0, NaN)."""
    if config.uncertainty not in chexpert.UNCERTAINTY_POLICIES:
        raise ValueError(f"uncertainty policy {config.uncertainty!r}")
    paths = RootPaths.from_root(config.mimic_root, config.hosp_dir, config.ecg_dir, config.cxr_dir)
    manifest, window, labs = _manifest(Path(config.dataset))
    rules = ecg_statements.load_phrase_table(Path(config.phrase_table))

    mm_path = find_source([paths.ecg / layout.MACHINE_MEASUREMENTS_FILE])
    measurements = ecg_statements.read_machine_measurements(mm_path, manifest["ecg_study_id"])
    ecg = ecg_statements.ecg_finding_labels(measurements, manifest["ecg_study_id"], rules)

    lab_path = find_source([paths.hosp / layout.LABEVENTS_FILE])
    rows = lab_flags.read_lab_rows(lab_path, [i for i, _ in labs], manifest["subject_id"])
    lab = lab_flags.lab_finding_labels(manifest, rows, labs, window)

    labeler_file = chexpert.LABELER_FILES[config.cxr_labeler]
    # MIMIC-CXR-JPG ships the labeler tables; accept them in the CXR root or beside it.
    cx_path = find_source(
        [paths.cxr / labeler_file, paths.cxr.parent / "mimic-cxr-jpg" / labeler_file]
    )
    table = chexpert.read_chexpert(cx_path, manifest["cxr_study_id"])
    cxr = chexpert.chexpert_finding_labels(table, manifest["cxr_study_id"], config.uncertainty)
    reports = radiology_reports.report_finding_labels(
        paths.cxr, manifest["subject_id"], manifest["cxr_study_id"], config.uncertainty
    )
    return pd.concat([manifest[["hadm_id"]].astype("int64"), ecg, lab, cxr, reports], axis=1)


def summarise(frame: pd.DataFrame) -> LabelsSummary:
    """Admissions labelled and prevalence of each finding column."""
    summary = LabelsSummary(admissions=len(frame))
    for column in frame.columns.drop("hadm_id"):
        known = frame[column].notna()
        summary.labelled[column] = int(known.sum())
        summary.prevalence[column] = float(frame.loc[known, column].mean()) if known.any() else 0.0
    return summary


def write_labels(config: LabelsConfig) -> LabelsSummary:
    """Derive the labels, write them as CSV (atomically) and log each finding's coverage."""
    frame = derive_labels(config)
    summary = summarise(frame)
    unlabelled = [c for c, n in summary.labelled.items() if n == 0]
    if unlabelled:
        logger.info(
            "labels: %d findings label no admission, left out: %s",
            len(unlabelled),
            ", ".join(unlabelled),
        )
        frame = frame.drop(columns=unlabelled)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = frame.to_csv(index=False, float_format="%.0f", lineterminator="\n")
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    for column in frame.columns.drop("hadm_id"):
        logger.info(
            "labels: %-40s prevalence %5.1f%% among %d of %d admissions",
            column,
            100 * summary.prevalence[column],
            summary.labelled[column],
            summary.admissions,
        )
    logger.info(
        "labels: wrote %d admissions x %d findings to %s", len(frame), frame.shape[1] - 1, out
    )
    return summary


__all__ = ["LabelsConfig", "LabelsSummary", "derive_labels", "summarise", "write_labels"]
