"""`symile-clinical preprocess`: a MIMIC root (real or synthetic) into a dataset directory."""

from __future__ import annotations

import argparse


def _floats(text: str) -> tuple[float, float]:
    """'-24,24' -> (-24.0, 24.0); argparse reports anything else as an invalid window."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI in hours") from None
    if not low < high:
        raise argparse.ArgumentTypeError(f"window {text!r}: LO must be below HI")
    return low, high


# argparse reads a value starting with '-' as an option: a negative LO needs the '=' form.
WINDOW_HELP = "hours from admittime; write --{name}=LO,HI when LO is negative (default {default})"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `preprocess` parser; the run callable imports the pipeline lazily."""
    parser = subparsers.add_parser(
        "preprocess",
        help="MIMIC ECG + labs + chest X-rays into tensors (resumable, parallel)",
        description=(
            "Read a MIMIC root (mimic-iv/hosp, mimic-iv-ecg, mimic-cxr as PhysioNet lays them "
            "out, or `symile-clinical synth` output) and write a dataset directory: per-split "
            "memmapped arrays, manifest, candidate sets, quarantine.csv and a report. "
            "Re-running with the same --out resumes an interrupted run."
        ),
    )
    parser.add_argument("--mimic-root", type=str, required=True, help="folder holding the releases")
    parser.add_argument("--out", type=str, required=True, help="dataset directory to write")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (default 1)")
    parser.add_argument("--cxr-size", type=int, default=320, help="CXR side in pixels (320)")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits and candidates")
    labs = parser.add_mutually_exclusive_group()
    labs.add_argument(
        "--labs", type=str, default=None, help="comma-separated itemids (default: the paper's 50)"
    )
    labs.add_argument(
        "--top-k-labs", type=int, default=None, help="the K labs most often observed in train"
    )
    parser.add_argument("--ecg-normalisation", choices=("minmax", "standardise"), default="minmax")
    parser.add_argument("--val", type=float, default=0.15, help="val size: fraction (<1) or count")
    parser.add_argument(
        "--test", type=float, default=0.15, help="test size: fraction (<1) or count"
    )
    parser.add_argument("--candidates", type=int, default=10, help="CXR candidates per query (10)")
    for name, default, note in (
        ("ecg-window", (-24.0, 24.0), ""),
        ("lab-window", (-24.0, 24.0), ""),
        ("cxr-window", (24.0, 72.0), "; LO exclusive"),
    ):
        parser.add_argument(
            f"--{name}",
            type=_floats,
            default=default,
            metavar="LO,HI",
            help=WINDOW_HELP.format(name=name, default=f"{default[0]:g},{default[1]:g}") + note,
        )
    parser.add_argument(
        "--cxr-views", type=str, default="AP,PA", help="accepted ViewPosition values"
    )
    parser.add_argument("--hosp-dir", type=str, default=None, help="override <root>/mimic-iv/hosp")
    parser.add_argument("--ecg-dir", type=str, default=None, help="override <root>/mimic-iv-ecg")
    parser.add_argument(
        "--cxr-dir", type=str, default=None, help="override <root>/mimic-cxr (DICOM or JPG)"
    )
    parser.add_argument(
        "--shard-size", type=int, default=128, help="admissions per committed shard"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep .work/ shards afterwards")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the PreprocessConfig from the arguments and run the pipeline; exit status 0.

    A PreprocessError (a bad root: exit 1; a bad option value: exit 2) is reported by the CLI.
    """
    import logging
    from pathlib import Path

    from preprocessing.cohort import CohortWindows
    from preprocessing.pipeline import PreprocessConfig, run_preprocess
    from preprocessing.splits import SplitSizes

    config = PreprocessConfig(
        mimic_root=Path(args.mimic_root),
        out=Path(args.out),
        workers=args.workers,
        cxr_size=args.cxr_size,
        seed=args.seed,
        ecg_normalisation=args.ecg_normalisation,
        lab_itemids=tuple(int(i) for i in args.labs.split(",")) if args.labs else None,
        top_k_labs=args.top_k_labs,
        windows=CohortWindows(
            ecg_h=args.ecg_window,
            lab_h=args.lab_window,
            cxr_h=args.cxr_window,
            cxr_views=tuple(v.strip() for v in args.cxr_views.split(",") if v.strip()),
        ),
        split_sizes=SplitSizes(val=args.val, test=args.test),
        candidates=args.candidates,
        shard_size=args.shard_size,
        hosp_dir=Path(args.hosp_dir) if args.hosp_dir else None,
        ecg_dir=Path(args.ecg_dir) if args.ecg_dir else None,
        cxr_dir=Path(args.cxr_dir) if args.cxr_dir else None,
        keep_work=args.keep_work,
        progress=not args.no_progress,
    )
    report = run_preprocess(config)
    admissions = report.counts["admissions"]
    logging.getLogger("preprocessing").info(
        "%d of %d admissions in the dataset %s; splits %s",
        admissions["included"],
        admissions["total"],
        report.out,
        report.splits,
    )
    return 0
