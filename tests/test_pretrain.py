"""Supervised encoder pretraining: labels files, what the encoders learn, the weights file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _dataset_factory import write_dataset, write_tiny_config

from models import build_model
from symile_clinical.cli import main
from symile_clinical.errors import EXIT_BAD_INPUT
from symile_clinical.formats.dataset_dir import DatasetDir
from symile_clinical.training.config import fit_model_to_data, load_config
from symile_clinical.training.pretrain import LabelsError, pretrain_encoders, read_labels


def _labels(dataset: DatasetDir) -> pd.DataFrame:
    """Findings each modality shows in the factory's data: the sign of lead I's mean (ECG),
    lab 0 above its fill (labs, unknown where missing), the CXR square's size (CXR)."""
    frames = []
    for split in ("train", "val", "test"):
        arrays = dataset.split(split)
        ecg = np.asarray(arrays.ecg[:, 0, :], dtype=np.float32).mean(axis=1) > 0
        labs = np.where(arrays.labs_observed[:, 0] > 0, arrays.labs[:, 0] > 0.5, np.nan)
        bright = (np.asarray(arrays.cxr) > 120).mean(axis=(1, 2, 3)) > 0.2
        hadm = pd.Series(dataset.hadm_ids(split)).sort_index().to_numpy()
        frames.append(
            pd.DataFrame(
                {"hadm_id": hadm, "ecg:lead_i_up": ecg, "labs:lab0_high": labs, "cxr:big": bright}
            )
        )
    table = pd.concat(frames, ignore_index=True)
    return table.astype({"ecg:lead_i_up": int, "cxr:big": int})


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[DatasetDir, Path, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    data = DatasetDir(write_dataset(root / "d", n_train=96, n_val=32, n_labs=4, ecg_samples=200))
    labels = root / "labels.csv"
    _labels(data).to_csv(labels, index=False)
    return data, labels, write_tiny_config(root / "c.toml", batch_size=16)


def test_labels_are_aligned_to_the_split_rows_with_unknowns(labelled, tmp_path: Path) -> None:
    data, path, _ = labelled
    table = pd.read_csv(path)
    shuffled = tmp_path / "shuffled.csv"
    table.sample(frac=1.0, random_state=0).iloc[5:].to_csv(shuffled, index=False)  # 5 rows gone
    for labels_path in (path, shuffled):
        labels = read_labels(labels_path, data, "val")
        assert labels.names == {"ecg": ["lead_i_up"], "labs": ["lab0_high"], "cxr": ["big"]}
        hadm = pd.Series(data.hadm_ids("val")).sort_index().to_numpy()
        expected = table.set_index("hadm_id").loc[hadm, "labs:lab0_high"].to_numpy()
        got = labels.values["labs"][:, 0]
        present = np.isin(hadm, pd.read_csv(labels_path)["hadm_id"])
        assert np.array_equal(got[present], expected[present], equal_nan=True)
        assert np.isnan(labels.values["ecg"][~present]).all()
    assert np.isnan(read_labels(path, data, "train").values["labs"]).any()  # missing labs


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("subject_id,ecg:x\n1,0\n", "has no hadm_id column"),
        ("hadm_id,eeg:x\n1,0\n", "is not <ecg|labs|cxr>:<finding>"),
        ("hadm_id,ecg:x\n1,2\n", "values other than 0, 1 or empty"),
        ("hadm_id,ecg:x\n1,0\n1,1\n", "repeats an hadm_id"),
        ("hadm_id\n1\n", "has no finding columns"),
        ("hadm_id,ecg:x,ecg:x\n1,0,1\n", "repeats a column name"),
        ("hadm_id,ecg:x\nabc,0\n", "not a whole number"),
        ("hadm_id,ecg:x\n1,0\n", "labels none of the train split"),
    ],
)
def test_a_bad_labels_file_is_refused_naming_it(labelled, tmp_path, content, reason) -> None:
    data, _, _ = labelled
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(LabelsError, match=reason) as caught:
        read_labels(path, data, "train")
    assert str(path) in str(caught.value)


def test_pretrained_encoders_learn_their_findings_and_start_a_model(labelled, tmp_path) -> None:
    data, labels, toml = labelled
    config = load_config(toml)
    out = tmp_path / "encoders.pt"
    accuracy = pretrain_encoders(config, data, labels, out, epochs=15, progress=False)
    assert accuracy["ecg"] >= 0.9 and accuracy["labs"] >= 0.8, accuracy
    weights = torch.load(out, weights_only=True)
    assert {key.split(".")[0] for key in weights} == {"ecg_encoder", "labs_encoder", "cxr_encoder"}
    model_config = fit_model_to_data(config, data.split("train")).model
    model = build_model(model_config, seed=3, encoder_weights=out)
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_the_pretrain_command_writes_weights_and_a_bad_labels_file_exits_1(
    labelled, tmp_path, caplog
) -> None:
    data, labels, toml = labelled
    out = tmp_path / "w.pt"
    argv = ["pretrain", "--data", str(data.path), "--config", str(toml), "--no-progress"]
    assert main([*argv, "--labels", str(labels), "--out", str(out), "--epochs", "1"]) == 0
    assert out.is_file()
    broken = tmp_path / "broken.csv"
    broken.write_text("hadm_id,ecg:x\n1,yes\n")
    with caplog.at_level("ERROR"):
        code = main([*argv, "--labels", str(broken), "--out", str(tmp_path / "x.pt")])
    assert code == EXIT_BAD_INPUT and str(broken) in caplog.text
    assert not (tmp_path / "x.pt").exists()


def test_the_synthetic_cohorts_findings_are_its_marker_bits(tmp_path: Path) -> None:
    from benchmarks.oracle_labels import finding_labels, write_finding_labels
    from preprocessing.synth.config import SynthConfig
    from preprocessing.synth.generate import TRUTH_FILE, generate_cohort

    root = tmp_path / "mimic"
    generate_cohort(SynthConfig(out=root, admissions=40, seed=0, cxr_max_size=64, progress=False))
    truth = pd.read_csv(root / TRUTH_FILE)
    labels = finding_labels(root)
    assert list(labels["hadm_id"]) == list(truth["hadm_id"])
    assert labels.shape[1] == 1 + 3 * 4
    assert (labels["ecg:long_pr"] == truth["ecg_bit_3"]).all()
    assert (labels["labs:high_eosinophils"] == truth["lab_bit_0"]).all()
    assert (labels["cxr:nodule_zone_2"] == truth["cxr_bit_2"]).all()
    written = write_finding_labels(root, tmp_path / "out" / "labels.csv")
    pd.testing.assert_frame_equal(pd.read_csv(written), labels)

    from benchmarks.label_ablation import oracle_without_mg_ca

    ablated = oracle_without_mg_ca(pd.read_csv(written))
    assert ablated.shape[1] == labels.shape[1] - 2
    assert "labs:high_magnesium" not in ablated and "labs:high_calcium" not in ablated
    assert (ablated["labs:high_eosinophils"] == truth["lab_bit_0"]).all()


def test_the_derived_marker_ablation_keeps_only_the_marker_findings(tmp_path: Path) -> None:
    """benchmarks/label_ablation.py: derived labels cut to the findings naming the markers."""
    from benchmarks.label_ablation import derived_markers
    from benchmarks.label_ablation import main as ablation_main

    derived = tmp_path / "labels.csv"
    derived.write_text(
        "hadm_id,ecg:t_wave_inversion,ecg:sinus_rhythm,labs:high_magnesium,labs:low_magnesium,"
        "cxr:nodule_right_upper,cxr:cardiomegaly\n"
        "20000001,1,1,,0,1,0\n20000002,0,1,1,0,,1\n"
    )
    oracle = tmp_path / "oracle.csv"
    oracle.write_text(
        "hadm_id,ecg:long_pr,labs:high_magnesium,labs:high_calcium,cxr:nodule_zone_0\n"
        "20000001,1,0,1,1\n"
    )
    kept = derived_markers(pd.read_csv(derived))
    assert list(kept.columns) == [
        "hadm_id",
        "ecg:t_wave_inversion",
        "labs:high_magnesium",
        "cxr:nodule_right_upper",
    ]
    ablation_main(
        ["--derived", str(derived), "--oracle", str(oracle), "--out", str(tmp_path / "out")]
    )
    written = pd.read_csv(tmp_path / "out" / "derived-markers.csv")
    assert written["labs:high_magnesium"].isna().tolist() == [True, False]  # blanks stay blank
    assert list(pd.read_csv(tmp_path / "out" / "oracle-no-mg-ca.csv").columns) == [
        "hadm_id",
        "ecg:long_pr",
        "cxr:nodule_zone_0",
    ]
    with pytest.raises(ValueError, match="none of the marker findings"):
        derived_markers(pd.DataFrame({"hadm_id": [1], "ecg:sinus_rhythm": [1]}))
