"""`symile-clinical import-release` and `compare-cohort`: argparse for the release workflow."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from symile_clinical.cli import int_at_least

log = logging.getLogger(__name__)


def register_import_release(subparsers: argparse._SubParsersAction) -> None:
    """Add the `import-release` subcommand."""
    parser = subparsers.add_parser(
        "import-release",
        help="import the published Symile-MIMIC release (tensors + authors' checkpoint)",
        description=(
            "Import a Symile-MIMIC release folder (PhysioNet, credentialed) into OUT/dataset "
            "(our dataset directory: the released splits, candidates as released) and OUT/run "
            "(a run directory holding the authors' model), so that evaluate, index and app "
            "work on it. Memory stays bounded (the CXRs are streamed in chunks); a killed "
            "import resumes where it stopped; a finished one is skipped."
        ),
    )
    parser.add_argument("--release", type=Path, required=True, help="the release folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="the authors' Lightning checkpoint (default RELEASE/symile_mimic_model.ckpt)",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int_at_least(1),
        default=32,
        help="CXRs converted at a time (default 32: about 40 MB of float32)",
    )
    parser.set_defaults(run=run_import_release)


def register_compare_cohort(subparsers: argparse._SubParsersAction) -> None:
    """Add the `compare-cohort` subcommand."""
    parser = subparsers.add_parser(
        "compare-cohort",
        help="how a dataset built by `preprocess` agrees with the Symile-MIMIC release",
        description=(
            "Compare our dataset's cohort with the release's: admissions in both or one "
            "only, the same ECG study and CXR dicom_id, lab values, and split overlap (a "
            "patient in their train split and our test split matters). Writes "
            "cohort_comparison.md and cohort_comparison.json."
        ),
    )
    parser.add_argument("--release", type=Path, required=True, help="the release folder")
    parser.add_argument(
        "--dataset", type=Path, required=True, help="our dataset directory (from preprocess)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: the dataset folder)"
    )
    parser.set_defaults(run=run_compare_cohort)


def run_import_release(args: argparse.Namespace) -> int:
    """Import the release's dataset, then its checkpoint as a run."""
    from app.workflows.release_import import import_release_run
    from preprocessing.symile_mimic_release import SymileMimicRelease, import_release_dataset
    from symile_clinical.formats.dataset_dir import DatasetDir

    release = SymileMimicRelease(args.release)
    out = Path(args.out)
    dataset = DatasetDir(out / "dataset")
    summary = import_release_dataset(release, dataset, chunk_rows=args.chunk_rows)
    checkpoint = args.checkpoint or release.checkpoint_path
    run = import_release_run(checkpoint, out / "run", dataset)
    log.info(
        "dataset %s: %s, %s queries with %d candidates each; run %s",
        dataset.path,
        summary.splits,
        summary.queries,
        summary.candidates_per_query,
        run.path,
    )
    log.info(
        "next: symile-clinical evaluate --run %s; symile-clinical app --run %s", run.path, run.path
    )
    return 0


def run_compare_cohort(args: argparse.Namespace) -> int:
    """Compare the two cohorts and write the markdown and JSON tables."""
    from preprocessing.compare_cohort import compare_cohort, write_comparison
    from preprocessing.symile_mimic_release import SymileMimicRelease
    from symile_clinical.formats.dataset_dir import DatasetDir

    dataset = DatasetDir(args.dataset)
    result = compare_cohort(SymileMimicRelease(args.release), dataset)
    json_path, md_path = write_comparison(result, args.out or dataset.path)
    a = result["admissions"]
    log.info(
        "%d admissions in both, %d release only, %d ours only; %d of their train patients in "
        "our test; wrote %s and %s",
        a["both"],
        a["theirs_only"],
        a["ours_only"],
        result["their_train_patients_in_our_test"],
        md_path,
        json_path,
    )
    return 0
