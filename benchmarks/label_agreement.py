"""How well labels derived from MIMIC's label sources agree with the generator's truth.

Builds (or reuses) a synthetic cohort, preprocesses it, runs `symile-clinical labels` on it
(which never reads synth_truth.csv.gz) and compares each derived finding with the hidden
state in synth_truth.csv.gz (a benchmark may read it): sensitivity and specificity over the
admissions the finding labels. Prints a Markdown table (docs/labels.md).

    .venv/bin/python benchmarks/label_agreement.py --admissions 500 --work /tmp/label_agreement
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from preprocessing.synth.config import TRUTH_FILE  # noqa: E402  (benchmarks may read it)

# derived column (or "a|b": positive if any is 1) -> truth expression on synth_truth rows
AGREEMENT = {
    "ecg:t_wave_inversion|ecg:anterior_t_changes": ("T inversion V1-V3 (marker 0)", "ecg_bit_0"),
    "ecg:wide_qrs": ("wide QRS (marker 1)", "ecg_bit_1"),
    "ecg:rsr_prime_v1|ecg:incomplete_rbbb|ecg:rbbb": ("RSR' V1 (marker 2)", "ecg_bit_2"),
    "ecg:long_pr": ("long PR (marker 3)", "ecg_bit_3"),
    "ecg:atrial_fibrillation": ("atrial fibrillation", "atrial_fibrillation"),
    "ecg:paced_rhythm": ("paced", "paced"),
    "ecg:lvh": ("LVH", "hypertension_lvh"),
    "ecg:acute_mi": ("infarction", "myocardial_infarction"),
    "labs:high_eosinophils": ("high eosinophils (marker 0)", "lab_bit_0"),
    "labs:high_monocytes": ("high monocytes (marker 1)", "lab_bit_1"),
    "labs:high_magnesium": ("high magnesium (marker 2)", "lab_bit_2"),
    "labs:high_calcium_total": ("high calcium (marker 3)", "lab_bit_3"),
    "labs:high_creatinine": ("kidney injury", "acute_kidney_injury"),
    "cxr:nodule_right_upper": ("nodule zone 0 (right upper)", "cxr_bit_0"),
    "cxr:nodule_left_upper": ("nodule zone 1 (left upper)", "cxr_bit_1"),
    "cxr:nodule_right_middle": ("nodule zone 2 (right mid)", "cxr_bit_2"),
    "cxr:nodule_left_middle": ("nodule zone 3 (left mid)", "cxr_bit_3"),
    "cxr:lung_lesion": ("any marker nodule (CheXpert)", "cxr_bit_0|cxr_bit_1|cxr_bit_2|cxr_bit_3"),
    "cxr:consolidation": ("pneumonia", "pneumonia"),
    "cxr:support_devices": ("pacemaker", "paced"),
    "cxr:pleural_effusion": ("effusion > 0.15", "effusion_left>0.15|effusion_right>0.15"),
    "cxr:edema": ("oedema > 0.3", "oedema>0.3"),
    "cxr:cardiomegaly": ("CTR > 0.5", "cardiothoracic_ratio>0.5"),
}


def _any(frame: pd.DataFrame, expression: str) -> pd.Series:
    """1 where any of the '|'-separated columns (or `column>value`) holds, NaN kept."""
    parts = []
    for term in expression.split("|"):
        if ">" in term:
            column, value = term.split(">")
            parts.append((frame[column] > float(value)).astype(float))
        else:
            parts.append(frame[term].astype(float))
    stacked = pd.concat(parts, axis=1)
    return stacked.max(axis=1, skipna=True).where(stacked.notna().any(axis=1))


def agreement_table(labels: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per derived finding: admissions labelled, prevalence, sensitivity, specificity."""
    merged = labels.merge(truth, on="hadm_id", how="left")
    rows = []
    for derived, (meaning, expression) in AGREEMENT.items():
        if not all(c in merged for c in derived.split("|")):
            continue
        guess, real = _any(merged, derived), _any(merged, expression)
        known = guess.notna() & real.notna()
        g, r = guess[known], real[known]
        rows.append(
            {
                "derived label": derived,
                "truth": meaning,
                "labelled": int(known.sum()),
                "true prevalence": r.mean(),
                "sensitivity": ((g == 1) & (r == 1)).sum() / max(1, (r == 1).sum()),
                "specificity": ((g == 0) & (r == 0)).sum() / max(1, (r == 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (no tabulate dependency)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the cohort and dataset if absent, derive labels, print the agreement table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=500)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--joint-fraction", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/label_agreement"))
    args = parser.parse_args(argv)
    cli = [sys.executable, "-m", "symile_clinical.cli"]
    root, dataset, out = args.work / "mimic", args.work / "dataset", args.work / "labels.csv"
    if not (root / "synth.json").exists():
        subprocess.run(
            [
                *cli,
                "synth",
                "--out",
                str(root),
                "--admissions",
                str(args.admissions),
                "--seed",
                str(args.seed),
                "--joint-fraction",
                str(args.joint_fraction),
                "--cxr-max-size",
                "64",
                "--workers",
                "2",
                "--no-progress",
            ],
            check=True,
        )
    if not (dataset / "manifest.parquet").exists():
        subprocess.run(
            [
                *cli,
                "preprocess",
                "--mimic-root",
                str(root),
                "--out",
                str(dataset),
                "--cxr-size",
                "16",
                "--candidates",
                "4",
                "--workers",
                "2",
                "--no-progress",
            ],
            check=True,
        )
    subprocess.run(
        [*cli, "labels", "--mimic-root", str(root), "--dataset", str(dataset), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    table = agreement_table(pd.read_csv(out), pd.read_csv(root / TRUTH_FILE))
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
