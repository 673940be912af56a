"""`symile-clinical labels`: derive pretraining labels from MIMIC's own label sources."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `labels` subcommand (imports only argparse; the readers load on run)."""
    parser = subparsers.add_parser(
        "labels",
        help="derive <modality>:<finding> labels for a dataset from MIMIC's label sources",
        description=(
            "For each admission of DATASET's manifest: its ECG's machine statements "
            "(mimic-iv-ecg/machine_measurements.csv, through an editable phrase table), its "
            "labs high/low against their reference ranges (labevents), its CXR study's "
            "CheXpert or NegBio labels (mimic-cxr-2.0.0-chexpert.csv.gz) and report "
            "(files/pNN/pNNNNNNNN/sNNNNNNNN.txt). Writes the labels CSV that `pretrain "
            "--labels` reads (docs/labels.md). Runs unchanged on real MIMIC downloads."
        ),
    )
    parser.add_argument("--mimic-root", required=True, help="folder holding the releases")
    parser.add_argument("--dataset", required=True, help="dataset directory (preprocess --out)")
    parser.add_argument("--out", required=True, help="labels CSV to write")
    parser.add_argument(
        "--uncertainty",
        choices=("ignore", "ones", "zeros"),
        default="ignore",
        help="CheXpert -1.0 and hedged report mentions: unknown (ignore, default), 1 or 0",
    )
    parser.add_argument(
        "--cxr-labeler",
        choices=("chexpert", "negbio"),
        default="chexpert",
        help="which MIMIC-CXR-JPG labeler table to read (default chexpert)",
    )
    parser.add_argument(
        "--phrase-table",
        default=None,
        help="ECG statement phrase table CSV (phrase,findings); default: the shipped one",
    )
    parser.add_argument("--hosp-dir", default=None, help="override <root>/mimic-iv/hosp")
    parser.add_argument("--ecg-dir", default=None, help="override <root>/mimic-iv-ecg")
    parser.add_argument("--cxr-dir", default=None, help="override <root>/mimic-cxr")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build a LabelsConfig and write the labels; a missing file or column exits 1."""
    from pathlib import Path

    from preprocessing.label_sources.derive import LabelsConfig, write_labels
    from preprocessing.label_sources.ecg_statements import PHRASE_TABLE

    def optional(value: str | None) -> Path | None:
        return Path(value) if value else None

    config = LabelsConfig(
        mimic_root=Path(args.mimic_root),
        dataset=Path(args.dataset),
        out=Path(args.out),
        uncertainty=args.uncertainty,
        cxr_labeler=args.cxr_labeler,
        phrase_table=Path(args.phrase_table) if args.phrase_table else PHRASE_TABLE,
        hosp_dir=optional(args.hosp_dir),
        ecg_dir=optional(args.ecg_dir),
        cxr_dir=optional(args.cxr_dir),
    )
    write_labels(config)
    return 0
