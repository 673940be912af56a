"""The preprocess pipeline on small MIMIC-format roots written here with wfdb and pydicom.

Each root holds admissions that pass every window and some that fail one on purpose, plus
broken files; the tests check the dataset directory against docs/formats.md, that every
admission and broken file is accounted for, and that runs are byte-reproducible: with any
worker count, and after a kill.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import wfdb
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from preprocessing import layout
from preprocessing.errors import InvalidRoot
from preprocessing.pipeline import PreprocessConfig, run_preprocess
from preprocessing.splits import SplitSizes

ITEMIDS = (50912, 50971, 51221, 51222, 51265)  # creatinine, potassium, Hct, Hb, platelets
TYPICAL = (1.0, 4.2, 40.0, 13.5, 250.0)  # a typical value of each, in the catalogue's units
T0 = datetime(2180, 1, 1, 8, 0, 0)
REPO = Path(__file__).resolve().parents[1]
# What build_root does to admission i (by i % 12) and the reason it must end up with.
FATES = {
    1: "no_ecg_in_window",
    2: "no_cxr_in_window",
    3: "no_labs_in_window",
    4: "ecg_rejected",  # truncated .dat
    5: "ecg_rejected",  # an 8-lead record
    6: "cxr_rejected",  # a DICOM without pixel data
}


@dataclass
class Root:
    """A written MIMIC root and what the test knows about it."""

    path: Path
    hadm_ids: list[int] = field(default_factory=list)
    expected_included: set[int] = field(default_factory=set)
    expected_reason: dict[int, str] = field(default_factory=dict)
    broken_files: dict[str, str] = field(default_factory=dict)  # relative file -> stage
    malformed_lab_ids: set[int] = field(default_factory=set)


def _write_csv_gz(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as handle:
        frame.to_csv(handle, index=False)


def _ecg_signals(rng: np.random.Generator, fs: int = 500) -> np.ndarray:
    """Sines with noise per MIMIC lead: float64 [samples, 12], mV."""
    t = np.arange(10 * fs) / fs
    rate = rng.uniform(0.8, 1.8)
    return np.stack(
        [
            0.2 * (i + 1) * np.sin(2 * np.pi * rate * (i + 1) * t + rng.uniform(0, 6))
            + 0.01 * rng.standard_normal(t.size)
            for i in range(12)
        ],
        axis=1,
    )


def _write_ecg(ecg_root: Path, subject: int, study: int, rng, leads=layout.MIMIC_ECG_LEADS) -> str:
    rel = layout.ecg_record_path(subject, study)
    directory = (ecg_root / rel).parent
    directory.mkdir(parents=True, exist_ok=True)
    signals = _ecg_signals(rng)[:, : len(leads)]
    wfdb.wrsamp(
        str(study),
        fs=500,
        units=["mV"] * len(leads),
        sig_name=list(leads),
        p_signal=signals,
        fmt=["16"] * len(leads),
        adc_gain=[200.0] * len(leads),
        baseline=[0] * len(leads),
        write_dir=str(directory),
    )
    return rel


def _write_cxr(path: Path, rng, size: int, with_pixels: bool = True) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = size, size + 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if rng.random() < 0.5 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    pixels = rng.integers(0, 4096, (size, size + 8)).astype(np.uint16)
    if with_pixels:
        ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def build_root(directory: Path, n_subjects: int = 24, seed: int = 0, cxr_pixels: int = 40) -> Root:
    """Write a small MIMIC root; admission i's fate is set by i (see the branches below)."""
    rng = np.random.default_rng(seed)
    mimic = layout.MimicRoot(directory)
    root = Root(directory)
    admissions, labs, ecg_rows, cxr_meta, cxr_list = [], [], [], [], []
    hadm, ecg_study, cxr_study, labevent = 20_000_000, 40_000_000, 50_000_000, 1
    for s in range(n_subjects):
        subject = 10_000_000 + 37 * s
        for a in range(1 + (s % 3 == 0)):  # every third patient has two admissions
            index = len(root.hadm_ids)
            admit = T0 + timedelta(days=40 * s + 10 * a, hours=float(rng.integers(0, 12)))
            admissions.append((subject, hadm, admit))
            root.hadm_ids.append(hadm)
            fate = index % 12
            # ECG: in the window unless fate 1 (only one 30 h before admission)
            ecg_offset = -30.0 if fate == 1 else float(rng.uniform(-20, 20))
            ecg_study += 1
            leads = layout.MIMIC_ECG_LEADS[:8] if fate == 5 else layout.MIMIC_ECG_LEADS
            rel = _write_ecg(mimic.ecg, subject, ecg_study, rng, leads)
            ecg_rows.append(
                (subject, ecg_study, ecg_study, admit + timedelta(hours=ecg_offset), rel)
            )
            if fate == 4:  # a truncated signal file
                dat = mimic.ecg / (rel + ".dat")
                dat.write_bytes(dat.read_bytes()[:30001])
                root.broken_files[f"mimic-iv-ecg/{rel}.dat"] = "ecg"
            if fate == 5:
                root.broken_files[f"mimic-iv-ecg/{rel}.hea"] = "ecg"
            # CXR: a lateral always; a frontal in (24, 72] h unless fate 2 (only at 20 h)
            cxr_study += 1
            for view, hours in (
                ("LATERAL", 30.0),
                ("PA" if a == 0 else "AP", 20.0 if fate == 2 else float(rng.uniform(25, 70))),
            ):
                dicom_id = hashlib.sha1(f"{cxr_study}{view}".encode()).hexdigest()[:20]
                rel_cxr = layout.cxr_image_path(subject, cxr_study, dicom_id)
                broken = fate == 6 and view != "LATERAL"
                _write_cxr(mimic.cxr / rel_cxr, rng, cxr_pixels, with_pixels=not broken)
                if broken:
                    root.broken_files[f"mimic-cxr/{rel_cxr}"] = "cxr"
                when = admit + timedelta(hours=hours)
                cxr_list.append((subject, cxr_study, dicom_id, rel_cxr))
                date, clock = int(when.strftime("%Y%m%d")), float(when.strftime("%H%M%S"))
                size = (cxr_pixels, cxr_pixels + 8)
                cxr_meta.append(
                    (dicom_id, subject, cxr_study, "CHEST", view, *size, date, clock, "", "", "")
                )
            # Labs: a panel at +1 h unless fate 3 (only at +30 h); fate 7 has a malformed row
            lab_offset = 30.0 if fate == 3 else 1.0
            for k, itemid in enumerate(ITEMIDS):
                if fate == 8 and k > 1:
                    continue  # some labs missing
                # inside the catalogue's plausible ranges (implausible values are quarantined)
                value = float(np.round(rng.normal(TYPICAL[k], 0.1 * TYPICAL[k]), 1))
                text = "ERROR" if fate == 7 and k == 0 else f"{value}"
                if fate == 7 and k == 0:
                    root.malformed_lab_ids.add(labevent)
                charttime = admit + timedelta(hours=lab_offset)
                ids = (labevent, subject, hadm, 1000 + labevent, itemid, "")
                labs.append((*ids, charttime, charttime, text, text, *[""] * 4, "ROUTINE", ""))
                labevent += 1
            # an ordinary text result with an empty valuenum, as MIMIC has: not quarantined
            ids = (labevent, subject, hadm, 99, 50934, "")
            labs.append((*ids, admit, admit, "___", "", *[""] * 5, "___"))
            labevent += 1
            reason = FATES.get(fate)
            if reason:
                root.expected_reason[hadm] = reason
            else:
                root.expected_included.add(hadm)
            hadm += 1

    fmt = "%Y-%m-%d %H:%M:%S"
    adm = pd.DataFrame(admissions, columns=["subject_id", "hadm_id", "admittime"])
    adm["admittime"] = adm["admittime"].dt.strftime(fmt)
    for column in layout.ADMISSIONS_COLUMNS:
        if column not in adm:
            adm[column] = ""
    _write_csv_gz(mimic.hosp / layout.ADMISSIONS_FILE, adm[list(layout.ADMISSIONS_COLUMNS)])
    patients = pd.DataFrame({"subject_id": sorted(adm["subject_id"].unique())})
    for column in layout.PATIENTS_COLUMNS[1:]:
        patients[column] = ""
    _write_csv_gz(mimic.hosp / layout.PATIENTS_FILE, patients)
    lab_frame = pd.DataFrame(labs, columns=list(layout.LABEVENTS_COLUMNS))
    for column in ("charttime", "storetime"):
        lab_frame[column] = pd.to_datetime(lab_frame[column]).dt.strftime(fmt)
    _write_csv_gz(mimic.hosp / layout.LABEVENTS_FILE, lab_frame)
    _write_csv_gz(
        mimic.hosp / layout.D_LABITEMS_FILE,
        pd.DataFrame(
            {"itemid": ITEMIDS, "label": ["x"] * 5, "fluid": ["Blood"] * 5, "category": [""] * 5}
        ),
    )
    ecg_frame = pd.DataFrame(ecg_rows, columns=list(layout.ECG_RECORD_LIST_COLUMNS))
    ecg_frame["ecg_time"] = ecg_frame["ecg_time"].dt.strftime(fmt)
    mimic.ecg.mkdir(parents=True, exist_ok=True)
    ecg_frame.to_csv(mimic.ecg / layout.ECG_RECORD_LIST_FILE, index=False)
    _write_csv_gz(
        mimic.cxr / layout.CXR_RECORD_LIST_FILE,
        pd.DataFrame(cxr_list, columns=list(layout.CXR_RECORD_LIST_COLUMNS)),
    )
    _write_csv_gz(
        mimic.cxr / layout.CXR_METADATA_FILE,
        pd.DataFrame(cxr_meta, columns=list(layout.CXR_METADATA_COLUMNS)),
    )
    return root


def small_config(root: Path, out: Path, **overrides) -> PreprocessConfig:
    settings = dict(
        mimic_root=root,
        out=out,
        cxr_size=16,
        seed=1,
        lab_itemids=ITEMIDS,
        split_sizes=SplitSizes(0.25, 0.25),
        candidates=3,
        shard_size=4,
        progress=False,
    )
    settings.update(overrides)
    return PreprocessConfig(**settings)


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file below directory (the report without its timings)."""
    digests = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "preprocess_report.json":
            report = json.loads(data)
            report.pop("timings_s")
            data = json.dumps(report, sort_keys=True).encode()
        digests[str(path.relative_to(directory))] = hashlib.sha256(data).hexdigest()
    return digests


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    return build_root(tmp_path_factory.mktemp("mimic"))


@pytest.fixture(scope="module")
def built(small_root: Root, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset") / "ds"
    run_preprocess(small_config(small_root.path, out))
    return out


def test_dataset_follows_formats(built: Path) -> None:
    meta = json.loads((built / "dataset.json").read_text())
    for key in (
        "schema_version",
        "created_by",
        "seed",
        "cxr_size",
        "ecg",
        "labs",
        "splits",
        "cohort",
    ):
        assert key in meta
    assert meta["ecg"]["leads"] == list(layout.CANONICAL_ECG_LEADS)
    assert [lab["itemid"] for lab in meta["labs"]] == list(ITEMIDS)
    assert {"cdf_values", "fill_percentile", "label", "fluid", "unit"} <= set(meta["labs"][0])
    manifest = pd.read_parquet(built / "manifest.parquet")
    assert list(manifest.columns) == [
        "split", "row", "subject_id", "hadm_id", "ecg_study_id", "ecg_path", "ecg_time",
        "dicom_id", "cxr_study_id", "cxr_path", "cxr_time", "admittime", "n_labs_observed",
    ]  # fmt: skip
    assert str(manifest["ecg_time"].dtype).startswith("datetime64")
    for split in ("train", "val", "test"):
        rows = manifest[manifest["split"] == split]
        n = meta["splits"][split]
        assert len(rows) == n and rows["row"].tolist() == list(range(n))
        arrays = {
            name: np.load(built / split / f"{name}.npy", mmap_mode="r")
            for name in ("ecg", "labs", "labs_observed", "cxr")
        }
        assert arrays["ecg"].shape == (n, 12, 5000) and arrays["ecg"].dtype == np.float16
        assert arrays["labs"].shape == (n, 5) and arrays["labs"].dtype == np.float32
        assert arrays["labs_observed"].dtype == np.uint8
        assert arrays["cxr"].shape == (n, 1, 16, 16) and arrays["cxr"].dtype == np.uint8
        assert (
            np.abs(arrays["ecg"]).max() <= 1.0
            and (arrays["labs"] >= 0).all()
            and (arrays["labs"] <= 1).all()
        )
        np.testing.assert_array_equal(arrays["labs_observed"].sum(axis=1), rows["n_labs_observed"])
    candidates = pd.read_parquet(built / "candidates.parquet")
    assert list(candidates.columns) == [
        "split",
        "query_row",
        "position",
        "candidate_row",
        "is_true",
    ]
    assert (candidates.groupby(["split", "query_row"])["is_true"].sum() == 1).all()


def test_every_admission_and_broken_file_accounted_for(small_root: Root, built: Path) -> None:
    manifest = pd.read_parquet(built / "manifest.parquet")
    quarantine = pd.read_csv(built / "quarantine.csv", dtype=str, keep_default_na=False)
    assert list(quarantine.columns) == ["id", "file", "stage", "reason"]
    assert set(manifest["hadm_id"]) == small_root.expected_included
    cohort = quarantine[quarantine["stage"] == "cohort"]
    got = {int(i): r.split(":")[0] for i, r in zip(cohort["id"], cohort["reason"], strict=True)}
    assert got == small_root.expected_reason
    files = quarantine[quarantine["stage"].isin(["ecg", "cxr"])]
    assert dict(zip(files["file"], files["stage"], strict=True)) == small_root.broken_files
    labs = quarantine[quarantine["stage"] == "labs"]
    assert {int(i) for i in labs["id"]} == small_root.malformed_lab_ids
    assert (labs["file"] == "mimic-iv/hosp/labevents.csv.gz").all()


def test_report_reconciles(small_root: Root, built: Path) -> None:
    report = json.loads((built / "preprocess_report.json").read_text())["counts"]
    adm = report["admissions"]
    assert adm["total"] == len(small_root.hadm_ids)
    assert adm["included"] == len(small_root.expected_included)
    assert adm["included"] + sum(adm["excluded"].values()) == adm["total"]
    assert adm["excluded"]["ecg_rejected"] == sum(
        r == "ecg_rejected" for r in small_root.expected_reason.values()
    )
    broken = small_root.broken_files
    expected_ecg = {
        "unreadable": sum(f.endswith(".dat") for f in broken),  # truncated samples
        "missing_leads": sum(f.endswith(".hea") for f in broken),  # the 8-lead records
    }
    assert report["ecg_files"]["rejected"] == expected_ecg
    assert report["cxr_files"]["rejected"] == {
        "no_pixel_data": sum(s == "cxr" for s in broken.values())
    }
    assert report["ecg_files"]["ok"] + sum(expected_ecg.values()) == report["ecg_files"]["read"]
    assert report["quarantine_rows"]["total"] == len(pd.read_csv(built / "quarantine.csv"))


def test_no_patient_in_two_splits(built: Path) -> None:
    manifest = pd.read_parquet(built / "manifest.parquet")
    assert (manifest.groupby("subject_id")["split"].nunique() == 1).all()


def test_labs_fitted_on_train_only(built: Path) -> None:
    meta = json.loads((built / "dataset.json").read_text())
    manifest = pd.read_parquet(built / "manifest.parquet")
    n_train_observed = np.load(built / "train" / "labs_observed.npy").sum(axis=0)
    assert [lab["n_train_observed"] for lab in meta["labs"]] == n_train_observed.tolist()
    assert sum(manifest["split"] == "train") == meta["splits"]["train"]


def test_ecg_rows_are_the_records_normalised(small_root: Root, built: Path) -> None:
    from preprocessing.ecg import load_ecg_record, normalise_ecg

    manifest = pd.read_parquet(built / "manifest.parquet")
    first = manifest.iloc[0]
    record = load_ecg_record(small_root.path / "mimic-iv-ecg" / first["ecg_path"])
    stored = np.load(built / first["split"] / "ecg.npy", mmap_mode="r")[first["row"]]
    np.testing.assert_array_equal(stored, normalise_ecg(record, "minmax").astype(np.float16))


def test_workers_give_identical_bytes(small_root: Root, built: Path, tmp_path: Path) -> None:
    out = tmp_path / "parallel"
    run_preprocess(small_config(small_root.path, out, workers=2))
    assert tree_digest(out) == tree_digest(built)


def test_resume_from_partial_work_gives_identical_bytes(
    small_root: Root, built: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    run_preprocess(small_config(small_root.path, out, keep_work=True))
    # What a kill leaves: some shards committed, one half-written staging folder, a
    # half-written array, and no dataset.json.
    shards = sorted((out / ".work" / "shards").iterdir())
    for shard in shards[::2]:
        os.rename(shard, shard.with_name(shard.name + ".tmp-999"))
    (out / "dataset.json").unlink()
    (out / "train" / "ecg.npy").rename(out / "train" / "ecg.npy.tmp")
    killed_write = out / "train" / ".labs.npy.tmp-999-0badf00d"  # an atomic write's temporary
    killed_write.write_bytes(b"half")
    run_preprocess(small_config(small_root.path, out))
    assert not killed_write.exists()
    leftovers = {p.name for p in out.rglob("*") if ".tmp" in p.name}
    assert not (out / ".work").exists()
    assert tree_digest(out).keys() - {f"train/{n}" for n in leftovers} == tree_digest(built).keys()
    for name, digest in tree_digest(built).items():
        assert tree_digest(out)[name] == digest, name


def test_completed_output_is_not_rebuilt(small_root: Root, built: Path) -> None:
    before = tree_digest(built)
    report = run_preprocess(small_config(small_root.path, built))
    assert report.counts["admissions"]["total"] == len(small_root.hadm_ids)
    assert tree_digest(built) == before


def test_missing_table_fails_at_once_naming_it(small_root: Root, tmp_path: Path) -> None:
    broken = tmp_path / "root"
    (broken / "mimic-iv" / "hosp").mkdir(parents=True)
    for name in ("admissions.csv.gz", "d_labitems.csv.gz"):
        (broken / "mimic-iv" / "hosp" / name).write_bytes(
            (small_root.path / "mimic-iv" / "hosp" / name).read_bytes()
        )
    with pytest.raises(InvalidRoot) as caught:
        run_preprocess(small_config(broken, tmp_path / "out"))
    message = str(caught.value)
    assert "labevents.csv.gz" in message and "record_list.csv" in message
    # Either CXR table will do: the metadata, or the record list to read DICOM headers.
    assert "mimic-cxr-2.0.0-metadata" in message and "cxr-record-list" in message
    assert not (tmp_path / "out").exists()


def test_wrong_columns_named(small_root: Root, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for sub in ("mimic-iv", "mimic-iv-ecg", "mimic-cxr"):
        os.symlink(small_root.path / sub, root / sub)
    hosp = tmp_path / "hosp"
    hosp.mkdir()
    for name in ("labevents.csv.gz", "d_labitems.csv.gz"):
        os.symlink(small_root.path / "mimic-iv" / "hosp" / name, hosp / name)
    _write_csv_gz(hosp / "admissions.csv.gz", pd.DataFrame({"subject_id": [1], "hadm_id": [2]}))
    with pytest.raises(InvalidRoot, match=r"admissions.csv.gz lacks columns \['admittime'\]"):
        run_preprocess(small_config(root, tmp_path / "out", hosp_dir=hosp))


def test_cli_runs_preprocess(small_root: Root, built: Path, tmp_path: Path) -> None:
    from symile_clinical.cli import main

    out = tmp_path / "cli"
    code = main(
        ["preprocess", "--mimic-root", str(small_root.path), "--out", str(out), "--cxr-size", "16",
         "--seed", "1", "--labs", ",".join(map(str, ITEMIDS)), "--val", "0.25", "--test", "0.25",
         "--candidates", "3", "--shard-size", "4", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    assert tree_digest(out) == tree_digest(built)


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_bytes(tmp_path: Path) -> None:
    root = build_root(tmp_path / "root", n_subjects=24, seed=3, cxr_pixels=700)
    config = dict(cxr_size=64, seed=2, lab_itemids=ITEMIDS, candidates=3, shard_size=2)
    reference = tmp_path / "reference"
    run_preprocess(small_config(root.path, reference, **config))
    out = tmp_path / "killed"
    script = (
        "from pathlib import Path\n"
        "from preprocessing.pipeline import PreprocessConfig, run_preprocess\n"
        "from preprocessing.splits import SplitSizes\n"
        f"run_preprocess(PreprocessConfig(mimic_root=Path({str(root.path)!r}),"
        f" out=Path({str(out)!r}), split_sizes=SplitSizes(0.25, 0.25), progress=False,"
        f" lab_itemids={ITEMIDS!r}, cxr_size=64, seed=2, candidates=3, shard_size=2))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    shards = out / ".work" / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        committed = [p for p in shards.glob("*") if ".tmp" not in p.name] if shards.is_dir() else []
        if len(committed) >= 2:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "dataset.json").exists(), "the run finished before it could be killed"
    run_preprocess(small_config(root.path, out, **config))
    assert tree_digest(out) == tree_digest(reference)


def test_quarantine_matches_synthetic_corrupted_csv(tmp_path: Path) -> None:
    from preprocessing.synth.config import SynthConfig
    from preprocessing.synth.generate import generate_cohort

    synth = tmp_path / "synth"
    generate_cohort(
        SynthConfig(
            out=synth, admissions=80, seed=0, corrupt_fraction=0.25, cxr_max_size=64, progress=False
        )
    )
    out = tmp_path / "ds"
    run_preprocess(
        PreprocessConfig(mimic_root=synth, out=out, cxr_size=32, candidates=4, progress=False)
    )
    corrupted = pd.read_csv(synth / "CORRUPTED.csv")
    quarantine = pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)
    assert len(corrupted) > 5
    # Lab rows: the table is read whole, so every malformed row is found.
    lab_rows = corrupted[corrupted["kind"] == "lab_non_numeric"]
    expected_ids = {int(r.split(":")[0].removeprefix("labevent_id ")) for r in lab_rows["reason"]}
    assert {int(i) for i in quarantine.loc[quarantine["stage"] == "labs", "id"]} == expected_ids
    # Files: the synth breaks files only where the windows keep the admission, so the
    # quarantine lists exactly the broken files of CORRUPTED.csv, no more and no fewer.
    cohort = quarantine[quarantine["stage"] == "cohort"]
    chosen = corrupted[corrupted["kind"] != "lab_non_numeric"]
    quarantined = quarantine[quarantine["stage"].isin(["ecg", "cxr"])]
    assert sorted(quarantined["file"]) == sorted(chosen["file"])
    assert len(chosen) >= 3
    # Each admission with a quarantined file is itself in quarantine, not in the tensors.
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert not set(chosen["hadm_id"]) & set(manifest["hadm_id"])
    rejected = {
        int(i) for i, r in zip(cohort["id"], cohort["reason"], strict=True) if "_rejected" in r
    }
    assert rejected == set(chosen["hadm_id"])


def test_mimic_cxr_jpg_root(small_root: Root, built: Path, tmp_path: Path) -> None:
    """A MIMIC-CXR-JPG release: .jpg files in the same layout and no cxr-record-list."""
    from PIL import Image

    from preprocessing.cxr import dicom_to_unit_image, to_uint8

    root = tmp_path / "root"
    root.mkdir()
    for sub in ("mimic-iv", "mimic-iv-ecg"):
        os.symlink(small_root.path / sub, root / sub)
    source = small_root.path / "mimic-cxr"
    (root / "mimic-cxr").mkdir()
    os.symlink(source / layout.CXR_METADATA_FILE, root / "mimic-cxr" / layout.CXR_METADATA_FILE)
    for dcm in source.rglob("*.dcm"):
        jpg = root / "mimic-cxr" / dcm.relative_to(source).with_suffix(".jpg")
        jpg.parent.mkdir(parents=True, exist_ok=True)
        if pydicom.dcmread(dcm).get("PixelData") is not None:
            Image.fromarray(to_uint8(dicom_to_unit_image(dcm))).save(jpg, quality=95)
    out = tmp_path / "jpg"
    run_preprocess(small_config(root, out))
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["cxr_path"].str.endswith(".jpg").all()
    reference = pd.read_parquet(built / "manifest.parquet")
    assert manifest["hadm_id"].tolist() == reference["hadm_id"].tolist()
    # The missing JPGs (where the DICOM had no pixels) are quarantined as missing files.
    quarantine = pd.read_csv(out / "quarantine.csv", keep_default_na=False)
    assert set(quarantine.loc[quarantine["stage"] == "cxr", "reason"].str.split(":").str[0]) == {
        "missing_file"
    }
    jpg_cxr = np.load(out / "train" / "cxr.npy")
    dcm_cxr = np.load(built / "train" / "cxr.npy")
    assert np.abs(jpg_cxr.astype(int) - dcm_cxr.astype(int)).mean() < 8  # JPEG is lossy


def test_top_k_labs_chosen_on_train(small_root: Root, tmp_path: Path) -> None:
    out = tmp_path / "topk"
    run_preprocess(small_config(small_root.path, out, lab_itemids=None, top_k_labs=3))
    meta = json.loads((out / "dataset.json").read_text())
    # Two labs are drawn for every admission; the other three tie and the lowest id wins.
    assert [lab["itemid"] for lab in meta["labs"]] == [50912, 50971, 51221]
    assert np.load(out / "train" / "labs.npy").shape[1] == 3


def test_cli_bad_root_exit_status(tmp_path: Path) -> None:
    from symile_clinical.cli import main

    # A root that cannot be used is an input problem: exit 1 (symile_clinical.errors).
    assert main(["preprocess", "--mimic-root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1


def test_an_unforeseen_reader_error_quarantines_the_file_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An odd DICOM tag raising ValueError deep in a reader is one file's problem."""
    from preprocessing import decode

    def odd_tag(path, size):
        raise ValueError("could not convert string to float: 'N/A'")

    monkeypatch.setattr(decode, "load_cxr_image", odd_tag)
    task = decode.ShardTask(
        index=0,
        directory=str(tmp_path / "shards" / "00000"),
        ecg_paths=(str(tmp_path / "missing"),),
        cxr_paths=(str(tmp_path / "odd.dcm"),),
        cxr_size=8,
        ecg_normalisation="minmax",
    )
    decode.decode_shard(task)
    [[ecg, cxr]] = decode.read_shard_status(Path(task.directory))
    assert ecg["kind"] == "missing_file"
    assert cxr["kind"] == "unexpected_error" and cxr["file"] == str(tmp_path / "odd.dcm")
    assert "ValueError" in cxr["reason"]
