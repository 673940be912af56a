"""How a locally built cohort (our `preprocess` on real MIMIC) agrees with the published
Symile-MIMIC release's: admissions in both or one only, the same ECG study and CXR dicom_id,
lab values, and split overlap by admission and by patient. Written as markdown and JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from preprocessing.labs import percentiles_from_cdf
from preprocessing.symile_mimic_release import SPLIT_SOURCES, SymileMimicRelease, ids_from_paths
from symile_clinical.formats.atomic import write_json_atomic, write_text_atomic
from symile_clinical.formats.dataset_dir import DatasetDir

VALUE_TOLERANCE = 1e-4  # percentile units: a lab value "equal" in both cohorts
COMPARISON_JSON = "cohort_comparison.json"
COMPARISON_MARKDOWN = "cohort_comparison.md"


def release_admissions(release: SymileMimicRelease) -> pd.DataFrame:
    """The release's admissions with their split (train, val, test queries), ids from the
    paths (or symile_mimic_data.csv), and the CSV's raw lab columns."""
    parts = []
    for split, (source, _) in SPLIT_SOURCES.items():
        frame = release.read_csv(source)
        if "label" in frame.columns:
            frame = frame[frame["label"] == 1]
        frame = frame.copy()  # one block per dtype: the CSV's many columns stay cheap
        frame["split"] = split
        parts.append(frame)
    table = pd.concat(parts, ignore_index=True)
    ids = ids_from_paths(table["ecg_path"], table["cxr_path"])
    cohort = release.read_cohort_csv()
    if cohort is not None and "cxr_dicom_id" in cohort.columns:
        lookup = cohort.drop_duplicates("hadm_id").set_index("hadm_id")
        ids["dicom_id"] = table["hadm_id"].map(lookup["cxr_dicom_id"]).fillna(ids["dicom_id"])
        if "ecg_study_id" in lookup.columns:
            mapped = pd.to_numeric(table["hadm_id"].map(lookup["ecg_study_id"]), errors="coerce")
            ids["ecg_study_id"] = mapped.fillna(ids["ecg_study_id"]).astype(np.int64).to_numpy()
    return pd.concat(
        [table.drop(columns=["ecg_study_id", "dicom_id"], errors="ignore"), ids], axis=1
    )


def _our_labs(dataset: DatasetDir, manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Our stored percentiles and observed flags of (split, row) pairs, in their order."""
    n_labs = dataset.n_labs
    percentiles = np.zeros((len(manifest), n_labs), np.float32)
    observed = np.zeros((len(manifest), n_labs), np.uint8)
    for split in manifest["split"].unique():
        where = np.flatnonzero(manifest["split"].to_numpy() == split)
        arrays = dataset.split(split)
        rows = manifest["row"].to_numpy(np.int64)[where]
        percentiles[where] = np.asarray(arrays.labs)[rows]
        observed[where] = np.asarray(arrays.labs_observed)[rows]
    return percentiles, observed


def compare_cohort(release: SymileMimicRelease, dataset: DatasetDir) -> dict[str, Any]:
    """How our dataset's cohort agrees with the release's: admissions in both or one only,
    the same ECG study and CXR dicom_id, lab observed/values (their raw value through our
    train CDF against our stored percentile), and split overlap by admission and by patient
    (a patient in their train and our test means the authors' model has seen them)."""
    theirs = release_admissions(release)
    ours = dataset.manifest(
        columns=["split", "row", "subject_id", "hadm_id", "ecg_study_id", "dicom_id"]
    )
    both = theirs.merge(ours, on="hadm_id", suffixes=("_theirs", "_ours"))
    admissions = {
        "theirs": len(theirs),
        "ours": len(ours),
        "both": len(both),
        "theirs_only": int((~theirs["hadm_id"].isin(ours["hadm_id"])).sum()),
        "ours_only": int((~ours["hadm_id"].isin(theirs["hadm_id"])).sum()),
    }
    same = {
        "subject_id": int((both["subject_id_theirs"] == both["subject_id_ours"]).sum()),
        "ecg_study_id": int((both["ecg_study_id_theirs"] == both["ecg_study_id_ours"]).sum()),
        "cxr_dicom_id": int(
            (both["dicom_id_theirs"].astype(str) == both["dicom_id_ours"].astype(str)).sum()
        ),
    }
    labs = _compare_labs(release, dataset, both)
    split_names = list(SPLIT_SOURCES)
    by_admission = pd.crosstab(both["split_theirs"], both["split_ours"]).reindex(
        index=split_names, columns=split_names, fill_value=0
    )
    subject_splits = {
        who: {
            s: set(table.loc[table["split"] == s, "subject_id"].astype(np.int64))
            for s in split_names
        }
        for who, table in (("theirs", theirs), ("ours", ours))
    }
    by_patient = {
        f"their_{a}__our_{b}": len(subject_splits["theirs"][a] & subject_splits["ours"][b])
        for a in split_names
        for b in split_names
    }
    return {
        "release": str(release.root),
        "dataset": str(dataset.path),
        "admissions": admissions,
        "same_in_both": same,
        "labs": labs,
        "splits_by_admission": {
            f"their_{a}": {f"our_{b}": int(by_admission.loc[a, b]) for b in split_names}
            for a in split_names
        },
        "patients_by_split": by_patient,
        "their_train_patients_in_our_test": by_patient["their_train__our_test"],
        "their_test_patients_in_our_train": by_patient["their_test__our_train"],
    }


def _compare_labs(
    release: SymileMimicRelease, dataset: DatasetDir, both: pd.DataFrame
) -> dict[str, Any]:
    """Lab agreement over the admissions in both cohorts and the labs in both lists."""
    our_specs = dataset.labs_spec
    our_column = {int(spec["itemid"]): i for i, spec in enumerate(our_specs)}
    shared = [i for i in release.itemids if i in our_column]
    result: dict[str, Any] = {
        "theirs": len(release.itemids),
        "ours": len(our_specs),
        "shared": len(shared),
        "theirs_only": sorted(set(release.itemids) - set(our_column)),
        "ours_only": sorted(set(our_column) - set(release.itemids)),
    }
    if both.empty or not shared:
        return {
            **result,
            "both_observed": 0,
            "both_missing": 0,
            "theirs_only_observed": 0,
            "ours_only_observed": 0,
            "values_compared": 0,
            "values_equal": 0,
        }
    rows = pd.DataFrame({"split": both["split_ours"].to_numpy(), "row": both["row"].to_numpy()})
    percentiles, observed = _our_labs(dataset, rows)
    columns = [our_column[i] for i in shared]
    ours_seen = observed[:, columns].astype(bool)
    ours_pct = percentiles[:, columns]
    raw = both[[str(i) for i in shared]].to_numpy(np.float64)
    theirs_seen = np.isfinite(raw)
    specs = [our_specs[c] for c in columns]
    mapped = percentiles_from_cdf(raw, theirs_seen, specs)  # their value on our scale
    compared = theirs_seen & ours_seen
    equal = compared & (np.abs(mapped - ours_pct) <= VALUE_TOLERANCE)
    per_lab = {
        str(itemid): {
            "both_observed": int(compared[:, j].sum()),
            "values_equal": int(equal[:, j].sum()),
        }
        for j, itemid in enumerate(shared)
    }
    return {
        **result,
        "both_observed": int(compared.sum()),
        "both_missing": int((~theirs_seen & ~ours_seen).sum()),
        "theirs_only_observed": int((theirs_seen & ~ours_seen).sum()),
        "ours_only_observed": int((~theirs_seen & ours_seen).sum()),
        "values_compared": int(compared.sum()),
        "values_equal": int(equal.sum()),
        "per_lab": per_lab,
    }


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as a short markdown report: one table per question."""
    a, same, labs = result["admissions"], result["same_in_both"], result["labs"]

    def share(count: int, total: int) -> str:
        return f"{count:,} ({100 * count / total:.1f}%)" if total else f"{count:,}"

    lines = [
        "# Our cohort against the Symile-MIMIC release",
        "",
        f"Release: `{result['release']}`; our dataset: `{result['dataset']}`.",
        "",
        "| admissions | count |",
        "|---|---|",
        f"| in the release (train + val + test queries) | {a['theirs']:,} |",
        f"| in our dataset | {a['ours']:,} |",
        f"| in both | {a['both']:,} |",
        f"| release only | {a['theirs_only']:,} |",
        f"| ours only | {a['ours_only']:,} |",
        "",
        "| of the admissions in both, the same | count |",
        "|---|---|",
        *(f"| {key} | {share(value, a['both'])} |" for key, value in same.items()),
        "",
        f"Labs: {labs['shared']} of the release's {labs['theirs']} are in our list of "
        f"{labs['ours']}.",
        "",
        "| lab entries (admissions in both x shared labs) | count |",
        "|---|---|",
        f"| observed in both | {labs['both_observed']:,} |",
        f"| missing in both | {labs['both_missing']:,} |",
        f"| observed in the release only | {labs['theirs_only_observed']:,} |",
        f"| observed in ours only | {labs['ours_only_observed']:,} |",
        f"| equal values, of those observed in both | "
        f"{share(labs['values_equal'], labs['values_compared'])} |",
        "",
        "Admissions in both, by split (rows: the release's; columns: ours):",
        "",
        "| | our train | our val | our test |",
        "|---|---|---|---|",
    ]
    for theirs, row in result["splits_by_admission"].items():
        cells = " | ".join(f"{row[c]:,}" for c in ("our_train", "our_val", "our_test"))
        lines.append(f"| {theirs.replace('_', ' ')} | {cells} |")
    lines += [
        "",
        f"Patients in the release's train split and in our test split: "
        f"**{result['their_train_patients_in_our_test']:,}** (the authors' model has seen "
        "them: leave them out before scoring it on our test split). Patients in the "
        f"release's test split and in our train split: "
        f"**{result['their_test_patients_in_our_train']:,}**.",
        "",
    ]
    return "\n".join(lines)


def write_comparison(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write OUT/cohort_comparison.json and .md atomically; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = write_json_atomic(out / COMPARISON_JSON, result)
    md_path = write_text_atomic(out / COMPARISON_MARKDOWN, comparison_markdown(result))
    return Path(json_path), Path(md_path)
