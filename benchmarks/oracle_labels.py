"""The ORACLE labels: the synthetic generator's hidden marker bits as a pretraining labels file.

For diagnosis and benchmarks only: they read synth_truth.csv.gz, the generator's answer key,
which no real hospital has. The product derives its labels from MIMIC's own label sources
(`symile-clinical labels`, preprocessing/label_sources/). `symile-clinical pretrain --labels`
reads either file: `hadm_id` and one column per finding, `<modality>:<name>`; here each marker
bit of synth_truth.csv.gz stands under the finding that shows it (preprocessing/synth: state.py,
ecg_waveform.py, labs_generator.py, cxr_phantom.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from preprocessing.synth.generate import TRUTH_FILE

ECG_FINDINGS = ("t_inversion_v1_v3", "wide_qrs", "rsr_prime_v1", "long_pr")
LAB_FINDINGS = ("high_eosinophils", "high_monocytes", "high_magnesium", "high_calcium")
CXR_FINDINGS = tuple(f"nodule_zone_{k}" for k in range(4))


def finding_labels(mimic_root: Path) -> pd.DataFrame:
    """hadm_id and every marker finding of each admission, as pretraining labels (0/1)."""
    truth = pd.read_csv(Path(mimic_root) / TRUTH_FILE)
    labels = {"hadm_id": truth["hadm_id"].astype("int64")}
    for prefix, column, names in (
        ("ecg", "ecg_bit_{k}", ECG_FINDINGS),
        ("labs", "lab_bit_{k}", LAB_FINDINGS),
        ("cxr", "cxr_bit_{k}", CXR_FINDINGS),
    ):
        for k, name in enumerate(names):
            labels[f"{prefix}:{name}"] = truth[column.format(k=k)].astype("int64")
    return pd.DataFrame(labels)


def write_finding_labels(mimic_root: Path, out: Path) -> Path:
    """Write `finding_labels(mimic_root)` as CSV to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    finding_labels(mimic_root).to_csv(out, index=False)
    return out
