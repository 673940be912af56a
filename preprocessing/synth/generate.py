"""Generate a synthetic cohort: plan patients, simulate them in a process pool, write tables.

The plan (how many admissions each patient has) is drawn in this process from the seed;
each patient is simulated from generators seeded by (seed, index); rows come back in plan
order and identifiers are bijective scrambles of indices. So the output is byte-identical
for a given config whatever the worker count.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from preprocessing import layout
from preprocessing.errors import SynthError
from preprocessing.lab_catalog import LAB_ITEMS
from preprocessing.layout import (
    CHEXPERT_COLUMNS,
    CHEXPERT_FILE,
    MACHINE_MEASUREMENTS_COLUMNS,
    MACHINE_MEASUREMENTS_FILE,
    NEGBIO_FILE,
)
from preprocessing.synth import corrupt
from preprocessing.synth.config import TRUTH_FILE, SynthConfig, SynthSummary
from preprocessing.synth.patient_records import (
    LAB_ROW_COLUMNS,
    MAX_ADMISSIONS_PER_PATIENT,
    TRUTH_COLUMNS,
    CohortIds,
    IdScramble,
    PatientPlan,
    PatientRows,
    SimContext,
    simulate_patients,
)
from preprocessing.synth.state import N_MARKERS, joint_marker_count
from preprocessing.synth.table_writers import csv_table, write_table
from symile_clinical.formats.atomic import write_json_atomic

logger = logging.getLogger(__name__)

MARKER_FILE = "synth.json"
IN_PROGRESS_FILE = ".synth-in-progress"
CORRUPTED_FILE = "CORRUPTED.csv"
PATIENTS_PER_TASK = 16
ADMISSIONS_PER_PATIENT_P = (0.7, 0.18, 0.08, 0.04)  # 1, 2, 3, 4 admissions


def plan_cohort(admissions: int, seed: int) -> list[PatientPlan]:
    """Split `admissions` into patients with 1-4 admissions each (seeded, in order)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    counts = rng.choice(
        np.arange(1, MAX_ADMISSIONS_PER_PATIENT + 1), size=admissions, p=ADMISSIONS_PER_PATIENT_P
    )
    plans, total = [], 0
    for index, k in enumerate(counts):
        k = int(min(k, admissions - total))
        plans.append(PatientPlan(index=index, n_admissions=k, first_admission=total))
        total += k
        if total == admissions:
            break
    return plans


def _prepare_output(out: Path) -> None:
    """Refuse to write into a folder that is not empty and not an earlier synthetic cohort."""
    if out.exists() and any(out.iterdir()):
        ours = (out / MARKER_FILE).exists() or (out / IN_PROGRESS_FILE).exists()
        if not ours:
            raise SynthError(out, "not empty and not a synthetic cohort; refusing to overwrite")
        for name in (layout.HOSP_DIR.parts[0], layout.ECG_DIR.name, layout.CXR_DIR.name):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (MARKER_FILE, TRUTH_FILE, CORRUPTED_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / IN_PROGRESS_FILE).write_text("synthetic cohort being written\n")


def _run_tasks(
    tasks: list[list[PatientPlan]], ctx: SimContext, workers: int
) -> Iterator[PatientRows]:
    """Simulate task groups in order, in-process or in a process pool."""
    if workers == 1:
        for plans in tasks:
            yield simulate_patients(plans, ctx)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # map() yields results in submission order, whatever order they finish in.
        yield from pool.map(simulate_patients, tasks, [ctx] * len(tasks), chunksize=1)


def _information_structure(joint_markers: int) -> dict:
    return {
        "markers": N_MARKERS,
        "joint_only_markers": list(range(joint_markers)),
        "pairwise_markers": list(range(joint_markers, N_MARKERS)),
        "ecg_expression": ["T inversion V1-V3", "wide QRS", "RSR' in V1", "long PR"],
        "lab_expression": [
            "Eosinophils % (51200)",
            "Monocytes % (51254)",
            "Magnesium (50960)",
            "Calcium, Total (50893)",
        ],
        "cxr_expression": "round nodular opacity in a fixed lung zone per marker",
        "rule": "joint-only: cxr = ecg XOR lab (ecg, lab fair coins); pairwise: cxr = ecg = lab",
    }


def generate_cohort(config: SynthConfig) -> SynthSummary:
    """Write the three MIMIC release roots under config.out and return what was written."""
    start = time.perf_counter()
    out = Path(config.out)
    _prepare_output(out)
    root = layout.MimicRoot(out)
    joint = joint_marker_count(config.joint_fraction)
    ctx = SimContext(
        root=out,
        seed=config.seed,
        joint_markers=joint,
        corrupt_fraction=config.corrupt_fraction,
        cxr_max_size=config.cxr_max_size,
        ids=CohortIds.from_seed(config.seed),
    )
    plans = plan_cohort(config.admissions, config.seed)
    tasks = [plans[i : i + PATIENTS_PER_TASK] for i in range(0, len(plans), PATIENTS_PER_TASK)]
    logger.info(
        "synth: %d admissions of %d patients into %s (%d workers)",
        config.admissions,
        len(plans),
        out,
        config.workers,
    )

    collected = PatientRows()
    lab_events = 0
    specimen_index: dict[tuple, int] = {}
    labs_path = root.hosp / layout.LABEVENTS_FILE
    bar = tqdm(total=config.admissions, desc="synth", unit="adm", disable=not config.progress)
    with csv_table(labs_path, layout.LABEVENTS_COLUMNS) as labs_writer:
        for rows in _run_tasks(tasks, ctx, config.workers):
            lab_events = _write_lab_rows(
                labs_writer, rows, lab_events, specimen_index, ctx.ids.specimen, collected
            )
            rows.labs.clear()
            collected.extend(rows)
            bar.update(len(rows.admissions))
    bar.close()

    files = _write_tables(root, out, collected)
    files["labevents"] = labs_path
    summary = SynthSummary(
        out=out,
        patients=len(collected.patients),
        admissions=len(collected.admissions),
        lab_events=lab_events,
        ecg_records=len(collected.ecg_records),
        cxr_images=len(collected.cxr_metadata),
        corrupted=len(collected.corrupted),
        joint_markers=joint,
        seconds=time.perf_counter() - start,
        files=files,
    )
    marker = {
        "generator": "symile-clinical synth",
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(config).items()
            if k not in ("workers", "progress", "out")
        },
        "counts": {
            k: getattr(summary, k)
            for k in (
                "patients",
                "admissions",
                "lab_events",
                "ecg_records",
                "cxr_images",
                "corrupted",
            )
        },
        "information_structure": _information_structure(joint),
    }
    # Written last and atomically: its presence means the cohort is complete.
    write_json_atomic(out / MARKER_FILE, marker)
    (out / IN_PROGRESS_FILE).unlink(missing_ok=True)
    logger.info("synth: done in %.1f s: %s", summary.seconds, marker["counts"])
    return summary


def _write_lab_rows(
    writer,
    rows: PatientRows,
    count: int,
    specimen_index: dict,
    specimen_ids: IdScramble,
    collected: PatientRows,
) -> int:
    """Number a group's lab rows (labevent_id, specimen_id), write them; returns the new count."""
    if not rows.labs:
        return count
    frame = pd.DataFrame(rows.labs, columns=list(LAB_ROW_COLUMNS))
    frame.insert(0, "labevent_id", np.arange(count + 1, count + 1 + len(frame), dtype=np.int64))
    specimen = []
    for key in frame["specimen_key"]:
        if key not in specimen_index:
            specimen_index[key] = len(specimen_index)
        specimen.append(specimen_ids(10_000_000, specimen_index[key]))
    frame["specimen_id"] = specimen
    broken = frame[frame["corrupt_reason"] != ""]
    file = f"{layout.HOSP_DIR.as_posix()}/{layout.LABEVENTS_FILE}"
    for _, r in broken.iterrows():
        reason = f"labevent_id {r['labevent_id']}: {r['corrupt_reason']}"
        collected.corrupted.append(
            (corrupt.LAB_NON_NUMERIC, file, r["subject_id"], r["admission_hadm_id"], reason)
        )
    writer.write(frame)
    return count + len(frame)


def _write_tables(root: layout.MimicRoot, out: Path, rows: PatientRows) -> dict[str, Path]:
    files = {
        "patients": root.hosp / layout.PATIENTS_FILE,
        "admissions": root.hosp / layout.ADMISSIONS_FILE,
        "d_labitems": root.hosp / layout.D_LABITEMS_FILE,
        "ecg_record_list": root.ecg / layout.ECG_RECORD_LIST_FILE,
        "cxr_record_list": root.cxr / layout.CXR_RECORD_LIST_FILE,
        "cxr_metadata": root.cxr / layout.CXR_METADATA_FILE,
        "truth": out / TRUTH_FILE,
        "corrupted": out / CORRUPTED_FILE,
        "machine_measurements": root.ecg / MACHINE_MEASUREMENTS_FILE,
        "chexpert": root.cxr / CHEXPERT_FILE,
        "negbio": root.cxr / NEGBIO_FILE,
    }
    tables = {
        "patients": (rows.patients, layout.PATIENTS_COLUMNS),
        "admissions": (rows.admissions, layout.ADMISSIONS_COLUMNS),
        "d_labitems": (
            [(i.itemid, i.label, i.fluid, i.category) for i in LAB_ITEMS],
            layout.D_LABITEMS_COLUMNS,
        ),
        "ecg_record_list": (rows.ecg_records, layout.ECG_RECORD_LIST_COLUMNS),
        "cxr_record_list": (rows.cxr_records, layout.CXR_RECORD_LIST_COLUMNS),
        "cxr_metadata": (rows.cxr_metadata, layout.CXR_METADATA_COLUMNS),
        "truth": (rows.truth, TRUTH_COLUMNS),
        "corrupted": (rows.corrupted, corrupt.CORRUPTED_COLUMNS),
        "machine_measurements": (rows.machine_measurements, MACHINE_MEASUREMENTS_COLUMNS),
        "chexpert": (rows.chexpert, CHEXPERT_COLUMNS),
        "negbio": (rows.negbio, CHEXPERT_COLUMNS),
    }
    for name, (data, columns) in tables.items():
        write_table(files[name], pd.DataFrame(data, columns=list(columns)), columns)
    return files
