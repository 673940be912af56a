"""Which labels carry Symile's advantage: two ablation label files for diagnosis.

    python benchmarks/label_ablation.py --derived study/pretrain/labels.csv \
        --oracle study/oracle-encoders.csv --out study/ablation
    symile-clinical pretrain --data study/pretrain/dataset --labels study/ablation/X.csv \
        --out study/ablation/X.pt --seed 0        # for each X written
    symile-clinical study --out study-ablation --fractions 1 --seeds 2 \
        --start X=study/ablation/X.pt ...         # beside --start oracle=study/oracle-encoders.pt

Writes, from one labelled cohort's files:
- `derived-markers.csv`: the DERIVED labels (`symile-clinical labels`, from MIMIC's label
  sources) restricted to the findings that name the generator's marker findings (T-wave
  inversion, wide QRS / IVCD, RSR'(V1), long PR; high eosinophils, monocytes, magnesium,
  calcium; nodules by zone). Whether the ~140 other findings dilute what the encoders learn.
- `oracle-no-mg-ca.csv`: the ORACLE marker bits (benchmarks/oracle_labels.py) without high
  magnesium and high calcium, the two lab markers no flag or reference range shows
  (docs/labels.md, sensitivity 0.05 and 0.01). Whether losing them alone removes the advantage.

Choosing columns by the generator's marker list is knowledge no real user has: diagnosis only,
never a product recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

DERIVED_MARKER_FINDINGS = (
    "ecg:t_wave_inversion",
    "ecg:wide_qrs",
    "ecg:ivcd",
    "ecg:rsr_prime_v1",
    "ecg:long_pr",
    "labs:high_eosinophils",
    "labs:high_absolute_eosinophil_count",
    "labs:high_monocytes",
    "labs:high_absolute_monocyte_count",
    "labs:high_magnesium",
    "labs:high_calcium_total",
    "cxr:nodule",
    "cxr:lung_lesion",
    "cxr:nodule_right_upper",
    "cxr:nodule_right_middle",
    "cxr:nodule_right_lower",
    "cxr:nodule_left_upper",
    "cxr:nodule_left_middle",
    "cxr:nodule_left_lower",
)
ORACLE_DROPPED = ("labs:high_magnesium", "labs:high_calcium")


def derived_markers(derived: pd.DataFrame) -> pd.DataFrame:
    """hadm_id and the derived findings of DERIVED_MARKER_FINDINGS that the file has."""
    kept = [c for c in DERIVED_MARKER_FINDINGS if c in derived.columns]
    if not kept:
        raise ValueError("the derived labels name none of the marker findings")
    return derived[["hadm_id", *kept]]


def oracle_without_mg_ca(oracle: pd.DataFrame) -> pd.DataFrame:
    """The oracle labels without ORACLE_DROPPED."""
    missing = [c for c in ORACLE_DROPPED if c not in oracle.columns]
    if missing:
        raise ValueError(f"the oracle labels have no column {', '.join(missing)}")
    return oracle.drop(columns=list(ORACLE_DROPPED))


def main(argv: list[str] | None = None) -> None:
    """Write the ablation label files (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--derived", type=Path, required=True, help="labels.csv of `labels`")
    parser.add_argument("--oracle", type=Path, required=True, help="oracle_labels' CSV")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in (
        ("derived-markers", derived_markers(pd.read_csv(args.derived))),
        ("oracle-no-mg-ca", oracle_without_mg_ca(pd.read_csv(args.oracle))),
    ):
        path = args.out / f"{name}.csv"
        frame.to_csv(path, index=False)
        print(f"{path}: {len(frame)} admissions, {frame.shape[1] - 1} findings", flush=True)


if __name__ == "__main__":
    main()
