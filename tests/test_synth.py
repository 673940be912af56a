"""The synthetic cohort, read back with the real readers and checked against real samples."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import wfdb
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from preprocessing import layout
from preprocessing.lab_catalog import PAPER_LAB_ITEMIDS, lab_by_itemid
from preprocessing.synth import SynthConfig, SynthError, generate_cohort
from preprocessing.synth.corrupt import (
    CXR_NO_PIXEL_DATA,
    CXR_NOT_AN_IMAGE,
    ECG_HEADER_MISMATCH,
    ECG_TRUNCATED,
    LAB_NON_NUMERIC,
)
from preprocessing.synth.cxr_phantom import MARKER_ZONES_FRONTAL, render_chest
from preprocessing.synth.dicom_writer import sample_encoding
from preprocessing.synth.ecg_waveform import synthesize_ecg
from preprocessing.synth.state import sample_admission, sample_patient
from preprocessing.synth.wfdb_writer import write_ecg_record, write_ecg_record_with_wfdb

REAL_HEADER = "ecg/mimic-iv-ecg-header/40689238.hea"
REAL_RECORD_LIST = "mimic-iv-ecg-demo/record_list.csv"
REAL_DICOMS = (
    "cxr/nhsx_nih_cxr14_dx_mono2_uncompressed_implicit.dcm",
    "cxr/wg04_RG1_JLSN_cr_chest_mono1_jpegls_nearlossless.dcm",
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """48 admissions with small images and two in five given a broken file."""
    out = tmp_path_factory.mktemp("synth") / "cohort"
    generate_cohort(
        SynthConfig(
            out=out,
            admissions=48,
            seed=7,
            joint_fraction=0.5,
            corrupt_fraction=0.4,
            cxr_max_size=128,
            progress=False,
        )
    )
    return out


def _read(root: Path, rel: str | Path) -> pd.DataFrame:
    return pd.read_csv(root / rel)


def _corrupted_files(root: Path) -> set[str]:
    return set(_read(root, "CORRUPTED.csv")["file"])


# ---------------------------------------------------------------- layout and tables


def test_release_roots_and_tables_have_mimic_columns(cohort: Path, shared_data: Path) -> None:
    root = layout.MimicRoot(cohort)
    expected = {
        root.hosp / layout.PATIENTS_FILE: layout.PATIENTS_COLUMNS,
        root.hosp / layout.ADMISSIONS_FILE: layout.ADMISSIONS_COLUMNS,
        root.hosp / layout.LABEVENTS_FILE: layout.LABEVENTS_COLUMNS,
        root.hosp / layout.D_LABITEMS_FILE: layout.D_LABITEMS_COLUMNS,
        root.ecg / layout.ECG_RECORD_LIST_FILE: layout.ECG_RECORD_LIST_COLUMNS,
        root.cxr / layout.CXR_RECORD_LIST_FILE: layout.CXR_RECORD_LIST_COLUMNS,
        root.cxr / layout.CXR_METADATA_FILE: layout.CXR_METADATA_COLUMNS,
    }
    for path, columns in expected.items():
        assert tuple(pd.read_csv(path, nrows=5).columns) == columns, path
    real = pd.read_csv(shared_data / REAL_RECORD_LIST, nrows=5)
    ours = pd.read_csv(root.ecg / layout.ECG_RECORD_LIST_FILE)
    assert list(ours.columns) == list(real.columns)
    assert ours["study_id"].is_unique
    assert (ours["file_name"] == ours["study_id"]).all()
    for subject, study, path in ours[["subject_id", "study_id", "path"]].itertuples(index=False):
        assert path == layout.ecg_record_path(subject, study)
        assert re.fullmatch(r"files/p\d{4}/p\d{8}/s\d{8}/\d{8}", path)


def test_id_and_time_columns_parse_like_mimic(cohort: Path) -> None:
    hosp = layout.MimicRoot(cohort).hosp
    patients = pd.read_csv(hosp / layout.PATIENTS_FILE)
    admissions = pd.read_csv(hosp / layout.ADMISSIONS_FILE)
    assert admissions["hadm_id"].is_unique and patients["subject_id"].is_unique
    assert len(admissions) == 48
    assert set(admissions["subject_id"]) == set(patients["subject_id"])
    assert admissions.groupby("subject_id").size().max() > 1, "expected repeat admissions"
    for column in ("subject_id", "hadm_id", "hospital_expire_flag"):
        assert admissions[column].dtype == np.int64
    admit = pd.to_datetime(admissions["admittime"], format="%Y-%m-%d %H:%M:%S")
    disch = pd.to_datetime(admissions["dischtime"], format="%Y-%m-%d %H:%M:%S")
    assert (disch > admit).all()
    assert patients["gender"].isin(["M", "F"]).all()
    assert admit.dt.year.between(2100, 2200).all()


def test_labevents_units_ranges_and_non_numeric_rows(cohort: Path) -> None:
    hosp = layout.MimicRoot(cohort).hosp
    labs = pd.read_csv(hosp / layout.LABEVENTS_FILE, dtype={"valuenum": str})
    d_items = pd.read_csv(hosp / layout.D_LABITEMS_FILE)
    assert set(labs["itemid"]) <= set(d_items["itemid"])
    assert set(PAPER_LAB_ITEMIDS) <= set(d_items["itemid"])
    assert labs["labevent_id"].is_unique
    numeric = pd.to_numeric(labs["valuenum"], errors="coerce")
    corrupt_rows = labs["valuenum"].notna() & numeric.isna()
    corrupted = _read(cohort, "CORRUPTED.csv")
    n_lab_corrupt = (corrupted["kind"] == LAB_NON_NUMERIC).sum()
    assert corrupt_rows.sum() == n_lab_corrupt > 0
    # Release-style free text: value present, valuenum empty.
    free_text = labs["valuenum"].isna()
    assert labs.loc[free_text, "value"].isin(["___", "ERROR"]).all()
    good = labs[numeric.notna()]
    for itemid, group in good.groupby("itemid"):
        item = lab_by_itemid(itemid)
        values = pd.to_numeric(group["valuenum"])
        assert values.between(item.plausible_low, item.plausible_high).all(), item.label
        assert (group["valueuom"].fillna("") == item.unit).all(), item.label
        assert np.allclose(pd.to_numeric(group["value"]), values)
    # ED labs drawn before admission carry no hadm_id, as in MIMIC-IV.
    assert labs["hadm_id"].isna().any() and labs["hadm_id"].notna().any()


# ---------------------------------------------------------------- ECG


def test_ecg_header_fields_match_the_real_mimic_header(cohort: Path, shared_data: Path) -> None:
    real = wfdb.rdheader(str((shared_data / REAL_HEADER).with_suffix("")))
    ecg_root = layout.MimicRoot(cohort).ecg
    records = pd.read_csv(ecg_root / layout.ECG_RECORD_LIST_FILE)
    broken = _corrupted_files(cohort)
    checked = 0
    for row in records.itertuples(index=False):
        if any(f.startswith(f"{layout.ECG_DIR}/{row.path}.") for f in broken):
            continue
        record = wfdb.rdrecord(str(ecg_root / row.path))
        for field in ("n_sig", "fs", "sig_len", "fmt", "adc_gain", "baseline", "units"):
            assert getattr(record, field) == getattr(real, field), field
        for field in ("adc_res", "adc_zero", "block_size", "sig_name"):
            assert getattr(record, field) == getattr(real, field), field
        assert record.sig_name == list(layout.MIMIC_ECG_LEADS)
        assert record.comments == [f"<subject_id>: {row.subject_id}"]
        stamp = datetime.combine(record.base_date, record.base_time)
        assert stamp == datetime.fromisoformat(row.ecg_time)
        assert record.p_signal.shape == (5000, 12)
        assert np.isfinite(record.p_signal).all() and np.abs(record.p_signal).max() < 10
        # Einthoven and Goldberger hold up to rounding to ADC units (1/200 mV).
        lead = {n: record.p_signal[:, k] for k, n in enumerate(record.sig_name)}
        assert np.abs(lead["III"] - (lead["II"] - lead["I"])).max() <= 0.016
        assert np.abs(lead["aVR"] + lead["aVL"] + lead["aVF"]).max() <= 0.016
        checked += 1
    assert checked >= 30
    real_lines = (shared_data / REAL_HEADER).read_text().splitlines()
    ours = (ecg_root / records["path"].iloc[-1]).with_suffix(".hea").read_text().splitlines()
    assert [len(line.split()) for line in ours] == [len(line.split()) for line in real_lines]


def test_fast_ecg_writer_is_byte_identical_to_wfdb_wrsamp(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for k in range(3):
        signal = rng.normal(0, 1.5, size=(5000, 12)).astype(np.float32)
        signal[:, k] += 40.0 * (k - 1)  # large means: checksums wrap; negative samples
        when = datetime(2180, 7, 23, 8, 44, 7 * k)
        rel = write_ecg_record(tmp_path / "fast", 10000032 + k, 40689238 + k, when, signal)
        write_ecg_record_with_wfdb(tmp_path / "wfdb", 10000032 + k, 40689238 + k, when, signal)
        for suffix in (".hea", ".dat"):
            fast = (tmp_path / "fast" / rel).with_suffix(suffix).read_bytes()
            slow = (tmp_path / "wfdb" / str(40689238 + k)).with_suffix(suffix).read_bytes()
            assert fast == slow, suffix


def _beats(signal: np.ndarray) -> np.ndarray:
    """R-peak sample indices from the spatial velocity of the 12 leads."""
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import find_peaks

    smooth = uniform_filter1d(signal, size=9, axis=0)  # white noise would swamp the slopes
    speed = np.sqrt((np.diff(smooth, axis=0) ** 2).sum(axis=1))
    peaks, _ = find_peaks(speed, distance=120, height=0.4 * np.percentile(speed, 99.5))
    return peaks


def test_ecg_rate_and_rhythm_follow_the_state() -> None:
    rng = np.random.default_rng(11)
    patient = replace(sample_patient(rng), chronic_af=False, pacemaker=False)
    state = sample_admission(rng, patient, 0)
    sinus = replace(state, atrial_fibrillation=False, paced=False, heart_rate=75.0)
    af = replace(sinus, atrial_fibrillation=True, heart_rate=110.0)
    rr_sinus = np.diff(_beats(synthesize_ecg(rng, patient, sinus))) / 500
    rr_af = np.diff(_beats(synthesize_ecg(rng, patient, af))) / 500
    assert 60 / rr_sinus.mean() == pytest.approx(75, rel=0.08)
    assert 60 / rr_af.mean() == pytest.approx(110, rel=0.15)
    assert rr_sinus.std() / rr_sinus.mean() < 0.05 < 0.1 < rr_af.std() / rr_af.mean()


# ---------------------------------------------------------------- CXR


def _monochrome2(ds: pydicom.Dataset) -> np.ndarray:
    """Pixels in MONOCHROME2 sense (high = bright), rescale applied."""
    pixels = ds.pixel_array.astype(np.float64)
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0)
    )
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return pixels


def test_dicom_files_decode_and_agree_with_metadata(cohort: Path, shared_data: Path) -> None:
    cxr_root = layout.MimicRoot(cohort).cxr
    meta = pd.read_csv(cxr_root / layout.CXR_METADATA_FILE)
    records = pd.read_csv(cxr_root / layout.CXR_RECORD_LIST_FILE)
    assert list(meta["dicom_id"]) == list(records["dicom_id"])
    broken = _corrupted_files(cohort)
    real_keywords = set()
    for name in REAL_DICOMS:
        real = pydicom.dcmread(shared_data / name, stop_before_pixels=True)
        real_keywords |= {e.keyword for e in real if e.keyword} & {
            "Modality",
            "SamplesPerPixel",
            "PhotometricInterpretation",
            "Rows",
            "Columns",
            "BitsAllocated",
            "BitsStored",
            "HighBit",
            "PixelRepresentation",
            "StudyDate",
            "StudyTime",
            "SOPClassUID",
            "SOPInstanceUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "PixelSpacing",
            "ViewPosition",
            "PatientID",
        }
    seen = {"syntax": set(), "photometric": set(), "bits": set(), "view": set(), "rescale": set()}
    seen["window"] = set()
    for row, rec in zip(meta.itertuples(index=False), records.itertuples(index=False), strict=True):
        assert rec.path == layout.cxr_image_path(rec.subject_id, rec.study_id, rec.dicom_id)
        if f"{layout.CXR_DIR}/{rec.path}" in broken:
            continue
        ds = pydicom.dcmread(cxr_root / rec.path)
        assert real_keywords <= {e.keyword for e in ds}
        assert ds.Modality in ("CR", "DX") and ds.BodyPartExamined == "CHEST"
        assert (ds.Rows, ds.Columns) == (row.Rows, row.Columns)
        assert ds.ViewPosition == row.ViewPosition
        assert ds.StudyDate == str(row.StudyDate)
        assert ds.PatientID == str(row.subject_id)
        assert ds.ViewCodeSequence[0].CodeMeaning == row.ViewCodeSequence_CodeMeaning
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) and pixels.dtype == np.uint16
        assert int(pixels.max()) < 2**ds.BitsStored
        seen["syntax"].add(ds.file_meta.TransferSyntaxUID)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["bits"].add(int(ds.BitsStored))
        seen["view"].add(ds.ViewPosition)
        seen["rescale"].add("RescaleSlope" in ds)
        seen["window"].add("WindowCenter" in ds)
    assert seen["syntax"] == {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        RLELossless,
        JPEG2000Lossless,
    }
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["bits"] == {12, 16}
    assert {"AP", "PA"} <= seen["view"] and seen["view"] & {"LATERAL", "LL"}
    assert seen["rescale"] == {True, False} and seen["window"] == {True, False}


def test_full_size_images_are_between_1k_and_3k_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    from preprocessing.synth.patient_records import _image_size

    sizes = [_image_size(rng, "PA", None) for _ in range(200)]
    largest = [max(r, c) for r, c, _ in sizes]
    assert min(largest) >= 1000 and max(largest) <= 3056
    assert all(0.1 < spacing < 0.45 for *_, spacing in sizes)
    capped = [_image_size(rng, "AP", 256) for _ in range(50)]
    assert max(max(r, c) for r, c, _ in capped) == 256
    encodings = [sample_encoding(rng) for _ in range(300)]
    assert {e.rescale is None for e in encodings} == {True, False}


def test_chest_phantom_follows_heart_size_effusion_and_markers() -> None:
    rng = np.random.default_rng(2)
    patient = replace(sample_patient(rng), pacemaker=False)
    base = replace(
        sample_admission(rng, patient, 0),
        cardiothoracic_ratio=0.42,
        effusion_left=0.0,
        effusion_right=0.0,
        oedema=0.0,
        consolidation=0.0,
        paced=False,
        cxr_bits=(0, 0, 0, 0),
    )

    def render(state):
        return render_chest(np.random.default_rng(0), patient, state, "PA", 256, 256)

    normal = render(base)
    big_heart = render(replace(base, cardiothoracic_ratio=0.66))
    effusion = render(replace(base, effusion_right=0.9))
    marker = render(replace(base, cxr_bits=(1, 0, 0, 0)))
    heart_row = slice(150, 170)  # v about 0.2: the widest part of the heart
    width = lambda img: (img[heart_row].mean(axis=0) > 0.45).sum()  # noqa: E731
    assert width(big_heart) > width(normal) + 15
    right_base = (slice(135, 165), slice(60, 100))  # patient's right lung base = image left
    assert effusion[right_base].mean() > normal[right_base].mean() + 0.1
    cu, cv = MARKER_ZONES_FRONTAL[0]
    x = int((cu * patient.thorax_width / 0.7 + 1) / 2 * 255)
    y = int((cv + 1) / 2 * 255)
    zone = (slice(y - 5, y + 6), slice(x - 5, x + 6))
    assert marker[zone].mean() > normal[zone].mean() + 0.15


# ---------------------------------------------------------------- timing, corruption, determinism


def test_time_windows_follow_the_truth_table(cohort: Path) -> None:
    root = layout.MimicRoot(cohort)
    truth = _read(cohort, "synth_truth.csv.gz")
    adm = pd.read_csv(root.hosp / layout.ADMISSIONS_FILE, parse_dates=["admittime"])
    ecg = pd.read_csv(root.ecg / layout.ECG_RECORD_LIST_FILE, parse_dates=["ecg_time"])
    meta = pd.read_csv(root.cxr / layout.CXR_METADATA_FILE)
    stamp = meta["StudyDate"].astype(str) + meta["StudyTime"].map(lambda t: f"{t:010.3f}")
    meta["time"] = pd.to_datetime(stamp, format="%Y%m%d%H%M%S.%f")
    frontal = meta[meta["ViewPosition"].isin(["AP", "PA"])]
    df = truth.merge(adm[["hadm_id", "admittime"]], on="hadm_id")
    assert (df["ecg_timing"] == "window").mean() > 0.6
    for row in df.itertuples(index=False):
        hours = ecg.loc[ecg["subject_id"] == row.subject_id, "ecg_time"] - row.admittime
        hours = hours.dt.total_seconds() / 3600
        in_window = hours.between(-24, 24).any()
        assert in_window == (row.ecg_timing == "window"), row
        cxr_hours = frontal.loc[frontal["subject_id"] == row.subject_id, "time"] - row.admittime
        cxr_hours = cxr_hours.dt.total_seconds() / 3600
        cxr_in = ((cxr_hours > 24) & (cxr_hours <= 72)).any()
        assert cxr_in == (row.cxr_timing == "window"), row


def test_every_corrupted_file_is_listed_and_really_broken(cohort: Path) -> None:
    corrupted = _read(cohort, "CORRUPTED.csv")
    assert list(corrupted.columns) == ["kind", "file", "subject_id", "hadm_id", "reason"]
    assert set(corrupted["kind"]) == {
        ECG_TRUNCATED,
        ECG_HEADER_MISMATCH,
        CXR_NO_PIXEL_DATA,
        CXR_NOT_AN_IMAGE,
        LAB_NON_NUMERIC,
    }
    truth = _read(cohort, "synth_truth.csv.gz")
    assert set(corrupted["hadm_id"]) == set(truth.loc[truth["corrupt_kind"].notna(), "hadm_id"])
    for row in corrupted.itertuples(index=False):
        path = cohort / row.file
        assert path.exists(), row.file
        if row.kind == ECG_TRUNCATED:
            assert path.stat().st_size < 5000 * 12 * 2
            with pytest.raises(Exception):  # noqa: B017 (wfdb raises several types)
                record = wfdb.rdrecord(str(path.with_suffix("")))
                assert record.p_signal.shape == (5000, 12)
        elif row.kind == ECG_HEADER_MISMATCH:
            record = wfdb.rdrecord(str(path.with_suffix("")))
            assert record.n_sig == 8 and record.sig_len == 7500
            assert path.with_suffix(".dat").stat().st_size == 5000 * 12 * 2
        elif row.kind == CXR_NO_PIXEL_DATA:
            ds = pydicom.dcmread(path)
            assert ds.Modality in ("CR", "DX") and "PixelData" not in ds
        elif row.kind == CXR_NOT_AN_IMAGE:
            ds = pydicom.dcmread(path)
            assert ds.Modality == "SR" and "PixelData" not in ds
        else:
            labevent_id = int(re.search(r"labevent_id (\d+)", row.reason).group(1))
            labs = pd.read_csv(path, dtype={"valuenum": str})
            text = labs.loc[labs["labevent_id"] == labevent_id, "valuenum"].item()
            assert np.isnan(pd.to_numeric(text, errors="coerce"))


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes_for_any_worker_count(tmp_path: Path) -> None:
    def make(name: str, workers: int) -> dict[str, str]:
        config = SynthConfig(
            out=tmp_path / name,
            admissions=24,
            seed=3,
            corrupt_fraction=0.2,
            workers=workers,
            cxr_max_size=64,
            progress=False,
        )
        generate_cohort(config)
        return _tree_digest(tmp_path / name)

    one, two = make("one", 1), make("two", 2)
    assert one == two
    assert len(one) > 60
    again = make("one", 1)  # regenerating into its own output is allowed and identical
    assert again == one
    other = generate_cohort(
        SynthConfig(out=tmp_path / "other", admissions=24, seed=4, cxr_max_size=64, progress=False)
    )
    assert _tree_digest(other.out) != one


def test_refuses_to_write_into_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "real-mimic").mkdir()
    (tmp_path / "real-mimic" / "keep.txt").write_text("not ours")
    with pytest.raises(SynthError, match="refusing"):
        generate_cohort(SynthConfig(out=tmp_path / "real-mimic", admissions=2, progress=False))
    assert (tmp_path / "real-mimic" / "keep.txt").read_text() == "not ours"


def test_cli_writes_a_cohort(tmp_path: Path) -> None:
    from symile_clinical.cli import main

    out = tmp_path / "cli"
    status = main(
        [
            "synth",
            "--out",
            str(out),
            "--admissions",
            "5",
            "--seed",
            "1",
            "--workers",
            "1",
            "--cxr-max-size",
            "64",
            "--no-progress",
        ]
    )
    assert status == 0
    assert len(pd.read_csv(out / layout.HOSP_DIR / layout.ADMISSIONS_FILE)) == 5
    assert main(["synth", "--out", str(out), "--admissions", "0"]) == 2


def test_labs_and_ordering_follow_the_state() -> None:
    from preprocessing.synth.labs_generator import lab_draws, lab_values

    rng = np.random.default_rng(8)
    patient = replace(sample_patient(rng), heart_failure=False, chronic_kidney_disease=False)
    well = replace(
        sample_admission(rng, patient, 0),
        pneumonia=False,
        hf_exacerbation=False,
        myocardial_infarction=False,
        bleeding=False,
        creatinine=0.9,
        wbc=7.0,
        hemoglobin=14.0,
        sickness=0.2,
    )

    def median(state, itemid: int) -> float:
        return float(np.median([lab_values(rng, patient, state)[itemid] for _ in range(40)]))

    sick = {
        "aki": replace(well, acute_kidney_injury=True, creatinine=3.5),
        "hf": replace(well, hf_exacerbation=True),
        "pneumonia": replace(well, pneumonia=True, wbc=16.0),
        "mi": replace(well, myocardial_infarction=True),
    }
    assert median(sick["aki"], 51006) > 2 * median(well, 51006)  # urea nitrogen
    assert median(sick["hf"], 50963) > 10 * median(well, 50963)  # NT-proBNP
    assert median(sick["pneumonia"], 50889) > 10 * median(well, 50889)  # CRP
    assert median(sick["mi"], 51003) > 20 * median(well, 51003)  # troponin T

    def troponin_ordered(state) -> float:
        draws = [lab_draws(rng, patient, state, "window")[0] for _ in range(200)]
        return float(np.mean(["cardiac" in d.panels for d in draws]))

    assert troponin_ordered(sick["mi"]) > 0.85 > 0.4 > troponin_ordered(well)
    assert lab_draws(rng, patient, well, "none") == []
    assert all(d.hours > 24 for d in lab_draws(rng, patient, well, "late"))


def test_label_sources_are_written_in_mimic_layouts(cohort: Path) -> None:

    root = layout.MimicRoot(cohort)
    measurements = pd.read_csv(root.ecg / layout.MACHINE_MEASUREMENTS_FILE)
    assert tuple(measurements.columns) == layout.MACHINE_MEASUREMENTS_COLUMNS
    records = _read(cohort, layout.ECG_DIR / layout.ECG_RECORD_LIST_FILE)
    assert set(measurements["study_id"]) == set(records["study_id"])
    truth = _read(cohort, "synth_truth.csv.gz")
    af = measurements.merge(truth, left_on="study_id", right_on="ecg_study_id")
    af = af[af["atrial_fibrillation"] == 1]
    assert (af["p_onset"] == layout.NO_WAVE).all()  # no P wave to measure
    assert measurements["report_0"].notna().all()
    for name in (layout.CHEXPERT_FILE, layout.NEGBIO_FILE):
        table = pd.read_csv(root.cxr / name)
        assert tuple(table.columns) == layout.CHEXPERT_COLUMNS
        values = table[list(layout.CHEXPERT_OBSERVATIONS)].to_numpy().ravel()
        assert set(values[~np.isnan(values)]) <= {1.0, 0.0, -1.0}
        assert set(table["study_id"]) == set(
            _read(cohort, layout.CXR_DIR / "cxr-record-list.csv.gz")["study_id"]
        )
    first = table.iloc[0]
    text = (
        root.cxr / layout.report_path(int(first["subject_id"]), int(first["study_id"]))
    ).read_text()
    assert "FINDINGS:" in text and "IMPRESSION:" in text


def test_lab_flags_and_reference_ranges_agree_with_values(cohort: Path) -> None:
    labs = pd.read_csv(cohort / layout.HOSP_DIR / layout.LABEVENTS_FILE, dtype={"valuenum": str})
    labs["valuenum"] = pd.to_numeric(labs["valuenum"], errors="coerce")  # corrupt rows: text
    numeric = labs[labs["valuenum"].notna()]
    outside = (numeric["valuenum"] < numeric["ref_range_lower"]) | (
        numeric["valuenum"] > numeric["ref_range_upper"]
    )
    assert ((numeric["flag"] == "abnormal") == outside).all()
    assert labs.loc[labs["valuenum"].isna(), "flag"].isna().all()
