"""Label sources: real-format rows read right, and the `labels` command on a synthetic cohort
with its answer key deleted."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from preprocessing import layout
from preprocessing.errors import InvalidTable
from preprocessing.label_sources import chexpert, ecg_statements, lab_flags, radiology_reports
from preprocessing.label_sources.source_files import finding_name
from symile_clinical.cli import main
from symile_clinical.errors import EXIT_BAD_INPUT

# Rows in MIMIC-IV-ECG's machine_measurements layout, with cart phrasing and sentinels.
MEASUREMENTS = (
    "subject_id,study_id,cart_id,ecg_time,"
    + ",".join(layout.REPORT_COLUMNS)
    + ",bandwidth,filtering,rr_interval,p_onset,p_end,qrs_onset,qrs_end,t_end,p_axis,qrs_axis,"
    "t_axis\n"
    "10000032,40689238,6848,2180-07-23 08:44:00,Sinus rhythm,Prolonged PR interval,"
    "Incomplete RBBB,Borderline ECG" + "," * 14 + ",0.005-150 Hz,60 Hz notch Baseline filter,"
    "659,40,128,170,258,518,81,77,79\n"
    "10000033,40689239,6702,2180-07-24 09:00:00,Atrial fibrillation with rapid ventricular "
    "response,Nonspecific T wave abnormality,Abnormal ECG" + "," * 15 + ",0.005-150 Hz,"
    "60 Hz notch Baseline filter,560,29999,29999,200,290,560,29999,45,32767\n"
    "10000034,40689240,6702,2180-07-25 09:00:00,Sinus rhythm,Normal ECG"
    + "," * 16
    + ",0.005-150 Hz,Baseline filter,900,40,128,170,258,518,60,50,40\n"
)


def test_machine_statements_read_through_the_phrase_table(tmp_path: Path) -> None:
    path = tmp_path / layout.MACHINE_MEASUREMENTS_FILE
    path.write_text(MEASUREMENTS)
    rules = ecg_statements.load_phrase_table()
    table = ecg_statements.read_machine_measurements(path)
    assert np.isnan(table.loc[1, "p_onset"]) and np.isnan(table.loc[1, "t_axis"])
    assert table.loc[0, "qrs_end"] == 258
    studies = pd.Series([40689238, 40689239, 40689240, 99])
    labels = ecg_statements.ecg_finding_labels(table, studies, rules)
    first, second, third, absent = (labels.iloc[i] for i in range(4))
    assert first["ecg:sinus_rhythm"] == first["ecg:long_pr"] == first["ecg:incomplete_rbbb"] == 1
    assert first["ecg:rbbb"] == 0  # "Incomplete RBBB" is not also "RBBB"
    assert first["ecg:borderline_ecg"] == 1
    assert second["ecg:atrial_fibrillation"] == second["ecg:nonspecific_t_abnormality"] == 1
    assert second["ecg:abnormal_ecg"] == 1 and second["ecg:sinus_rhythm"] == 0
    assert third["ecg:normal_ecg"] == 1 and third["ecg:abnormal_ecg"] == 0  # not "Abnormal"
    assert absent.isna().all()


def test_an_edited_phrase_table_is_used_and_a_bad_one_refused(tmp_path: Path) -> None:
    table = tmp_path / "phrases.csv"
    table.write_text("phrase,findings\nNonspecific T wave abnormality,t_wave_inversion\n")
    rules = ecg_statements.load_phrase_table(table)
    assert ecg_statements.statement_findings(["Nonspecific T wave abnormality"], rules) == {
        "t_wave_inversion"
    }
    table.write_text("phrase,finding\nX,y\n")
    with pytest.raises(InvalidTable, match="findings"):
        ecg_statements.load_phrase_table(table)


def test_chexpert_rows_with_uncertain_and_blank_values(tmp_path: Path) -> None:
    path = tmp_path / layout.CHEXPERT_FILE
    header = ",".join(layout.CHEXPERT_COLUMNS)
    row = {o: "" for o in layout.CHEXPERT_OBSERVATIONS}
    row |= {"Lung Lesion": "-1.0", "Pleural Effusion": "1.0", "Pneumothorax": "0.0"}
    with gzip.open(path, "wt") as fh:
        fh.write(f"{header}\n10000032,50414267,{','.join(row.values())}\n")
    table = chexpert.read_chexpert(path)
    studies = pd.Series([50414267, 1])
    ignore = chexpert.chexpert_finding_labels(table, studies, "ignore").iloc[0]
    assert np.isnan(ignore["cxr:lung_lesion"])
    assert ignore["cxr:pleural_effusion"] == 1 and ignore["cxr:pneumothorax"] == 0
    assert ignore["cxr:edema"] == 0  # blank: not mentioned
    assert chexpert.chexpert_finding_labels(table, studies, "ones").iloc[0]["cxr:lung_lesion"] == 1
    assert chexpert.chexpert_finding_labels(table, studies, "zeros").iloc[0]["cxr:lung_lesion"] == 0
    assert chexpert.chexpert_finding_labels(table, studies, "ignore").iloc[1].isna().all()


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 FINDINGS:

 No focal consolidation. There is a 1.2 cm right upper lobe nodule. No pleural
 effusion or pneumothorax. Questionable nodular opacity at the left base.

 IMPRESSION:

 Right upper lobe nodule, recommend CT.
"""


def test_report_phrases_with_location_negation_and_hedges(tmp_path: Path) -> None:
    found = radiology_reports.located_findings(REPORT)
    assert found["nodule_right_upper"] == 1.0
    assert found["nodule_left_lower"] == -1.0  # hedged
    assert found["nodule_left_upper"] == 0.0
    assert found["consolidation_right_upper"] == 0.0 and found["consolidation"] == 0.0
    rel = layout.report_path(10000032, 50414267)
    assert rel == "files/p10/p10000032/s50414267.txt"
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text(REPORT)
    labels = radiology_reports.report_finding_labels(
        tmp_path, pd.Series([10000032, 10000033]), pd.Series([50414267, 50414268]), "ignore"
    )
    assert labels.loc[0, "cxr:nodule_right_upper"] == 1
    assert np.isnan(labels.loc[0, "cxr:nodule_left_lower"])
    assert labels.iloc[1].isna().all()  # no report: unknown


def test_lab_direction_from_range_then_flag_then_catalogue() -> None:
    value = np.array([5.5, 5.5, 0.5, 9.0, np.nan])
    lower = np.array([1.0, np.nan, np.nan, np.nan, 1.0])
    upper = np.array([4.0, np.nan, np.nan, np.nan, 4.0])
    flag = np.array(["", "abnormal", "abnormal", "", ""], dtype=object)
    high, low = lab_flags.lab_direction(51200, value, lower, upper, flag)  # eosinophils 1-4 %
    np.testing.assert_array_equal(high[:4], [1, 1, 0, 1])
    np.testing.assert_array_equal(low[:4], [0, 0, 1, 0])
    assert np.isnan(high[4]) and np.isnan(low[4])
    assert finding_name("Calcium, Total") == "calcium_total"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    from preprocessing.synth import SynthConfig, generate_cohort
    from preprocessing.synth.generate import TRUTH_FILE

    work = tmp_path_factory.mktemp("labels")
    root, dataset = work / "mimic", work / "dataset"
    generate_cohort(
        SynthConfig(
            out=root, admissions=48, seed=2, joint_fraction=1.0, cxr_max_size=48, progress=False
        )
    )
    (root / TRUTH_FILE).unlink()  # the command must not need the answer key
    status = main(
        [
            "preprocess",
            "--mimic-root",
            str(root),
            "--out",
            str(dataset),
            "--cxr-size",
            "16",
            "--candidates",
            "4",
            "--no-progress",
        ]
    )
    assert status == 0
    return root, dataset


def test_labels_command_without_the_answer_key(cohort, tmp_path: Path) -> None:
    from symile_clinical.formats.dataset_dir import DatasetDir

    root, dataset = cohort
    out = tmp_path / "labels.csv"
    assert (
        main(["labels", "--mimic-root", str(root), "--dataset", str(dataset), "--out", str(out)])
        == 0
    )
    labels = pd.read_csv(out)
    manifest = DatasetDir(dataset).manifest()
    assert sorted(labels["hadm_id"]) == sorted(manifest["hadm_id"])
    for column in (
        "ecg:long_pr",
        "ecg:wide_qrs",
        "labs:high_eosinophils",
        "cxr:lung_lesion",
        "cxr:nodule_right_upper",
    ):
        assert column in labels, column
    values = labels.drop(columns="hadm_id").to_numpy().ravel()
    assert set(values[~np.isnan(values)]) <= {0.0, 1.0}
    assert labels["ecg:long_pr"].notna().all()


def test_labels_command_names_a_missing_file_and_column(cohort, tmp_path: Path) -> None:
    root, dataset = cohort
    broken = tmp_path / "mimic"
    (broken / "mimic-iv-ecg").mkdir(parents=True)
    for part in ("mimic-iv", "mimic-cxr"):
        (broken / part).symlink_to(root / part)
    args = [
        "labels",
        "--mimic-root",
        str(broken),
        "--dataset",
        str(dataset),
        "--out",
        str(tmp_path / "l.csv"),
    ]
    assert main(args) == EXIT_BAD_INPUT  # machine_measurements.csv missing
    table = pd.read_csv(root / "mimic-iv-ecg" / layout.MACHINE_MEASUREMENTS_FILE)
    table.drop(columns="report_0").to_csv(
        broken / "mimic-iv-ecg" / layout.MACHINE_MEASUREMENTS_FILE, index=False
    )
    with pytest.raises(InvalidTable, match="report_0"):
        from preprocessing.label_sources.derive import LabelsConfig, derive_labels

        derive_labels(LabelsConfig(mimic_root=broken, dataset=dataset, out=tmp_path / "x.csv"))
    assert main(args) == EXIT_BAD_INPUT


def test_a_dataset_without_its_lab_window_is_read_in_the_assumed_one(
    cohort, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging

    from preprocessing.label_sources.derive import LabelsConfig, derive_labels

    root, dataset = cohort
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["cohort"]["lab_window_h"] == [-24, 24]  # the window this cohort was built with
    older = tmp_path / "older"
    older.mkdir()
    (older / "manifest.parquet").symlink_to(dataset / "manifest.parquet")
    del info["cohort"]["lab_window_h"]  # a dataset written before it was recorded
    (older / "dataset.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="preprocessing.label_sources.derive"):
        labels = derive_labels(LabelsConfig(mimic_root=root, dataset=older, out=tmp_path / "l"))
    assert str(older) in caplog.text and "assumed window (-24, 24) h" in caplog.text
    recorded = derive_labels(LabelsConfig(mimic_root=root, dataset=dataset, out=tmp_path / "m"))
    pd.testing.assert_frame_equal(labels, recorded)


_TRUTH_OPENS: list[str] = []
_WATCHING: list[str] = []  # the answer key's file name while a test watches
_HOOKED: list[bool] = []  # an audit hook cannot be removed: add it once per process


def _record_truth_opens(event: str, args: tuple) -> None:
    if event == "open" and _WATCHING and args and _WATCHING[0] in str(args[0]):
        _TRUTH_OPENS.append(str(args[0]))


def test_preprocess_and_labels_never_open_the_answer_key_even_when_present(
    tmp_path: Path,
) -> None:
    """The deleted-key cohort above proves the product does not need synth_truth; this one
    proves it does not read it when it is there: every file open is audited."""
    import sys

    from preprocessing.synth import SynthConfig, generate_cohort
    from preprocessing.synth.generate import TRUTH_FILE

    root, dataset = tmp_path / "mimic", tmp_path / "dataset"
    generate_cohort(SynthConfig(out=root, admissions=48, seed=3, cxr_max_size=48, progress=False))
    assert (root / TRUTH_FILE).exists()
    if not _HOOKED:
        sys.addaudithook(_record_truth_opens)
        _HOOKED.append(True)
    _TRUTH_OPENS.clear()
    _WATCHING[:] = [TRUTH_FILE]
    try:
        preprocess = ["preprocess", "--mimic-root", str(root), "--out", str(dataset)]
        assert main([*preprocess, "--cxr-size", "16", "--candidates", "4", "--no-progress"]) == 0
        labels = ["labels", "--mimic-root", str(root), "--dataset", str(dataset)]
        assert main([*labels, "--out", str(tmp_path / "labels.csv")]) == 0
        assert _TRUTH_OPENS == []
        (root / TRUTH_FILE).open("rb").close()  # the hook does see a read of the key
        assert [str(root / TRUTH_FILE)] == _TRUTH_OPENS
    finally:
        _WATCHING.clear()
