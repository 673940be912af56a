"""Hostile files that a few bytes of header could make cost gigabytes: each is refused
from its header, and the process that reads it never needs more than 1 GB of address
space above its baseline.

Each case runs in a fresh subprocess that imports everything, measures its own address
space (VmSize), sets RLIMIT_AS to that baseline + 1 GB, and only then reads the file: a
reader that allocated what the header declares would die with MemoryError instead of
printing the refusal. The files are real: WFDB written with wfdb, DICOM with pydicom, a zip
with zipfile whose headers are then made to understate the member's size.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from preprocessing.layout import MIMIC_ECG_LEADS

REPO = Path(__file__).resolve().parents[1]
HEADROOM = 2**30  # the bound: 1 GB above the baseline

# The case runner: imports first, then the limit, then the read; prints one JSON line.
RUNNER = """
import json, resource, sys
import numpy, scipy.signal, wfdb, pydicom, pydicom.pixels
from preprocessing.ecg import load_ecg_record
from preprocessing.cxr import load_cxr_image
from preprocessing.errors import InvalidRecord
from app.uploads import UploadError, read_ecg_upload

def address_space():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

baseline = address_space()
limit = baseline + int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
kind, path = sys.argv[1], sys.argv[2]
try:
    if kind == "ecg":
        load_ecg_record(path)
    elif kind == "cxr":
        load_cxr_image(path, 64)
    elif kind == "upload":
        files = [(name, open(f"{path}/{name}", "rb").read()) for name in sys.argv[4:]]
        read_ecg_upload(files, "minmax")
    print(json.dumps({"outcome": "accepted"}))
except (InvalidRecord, UploadError) as error:
    print(json.dumps({"outcome": "refused", "kind": getattr(error, "kind", ""),
                      "reason": error.reason}))
except MemoryError:
    print(json.dumps({"outcome": "memory_error"}))
"""


def run_bounded(kind: str, path: Path, *names: str) -> dict:
    """Run one case under RLIMIT_AS = baseline + 1 GB; its JSON outcome."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, kind, str(path), str(HEADROOM), *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_ecg(folder: Path, name: str = "40000001") -> Path:
    """A real 12-lead, 10 s, 500 Hz record (format 16) written with wfdb; its header path."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(5000) / 500.0
    signal = np.stack([0.5 * np.sin(2 * np.pi * (1 + i / 10) * t) for i in range(12)], axis=1)
    wfdb.wrsamp(
        name,
        fs=500,
        units=["mV"] * 12,
        sig_name=list(MIMIC_ECG_LEADS),
        p_signal=signal,
        fmt=["16"] * 12,
        adc_gain=[200.0] * 12,
        baseline=[0] * 12,
        write_dir=str(folder),
    )
    return folder / f"{name}.hea"


def set_fs(header: Path, fs: str) -> None:
    """Rewrite the record line's sampling frequency (field 3), nothing else."""
    lines = header.read_text().splitlines()
    fields = lines[0].split()
    fields[2] = fs
    header.write_text("\n".join([" ".join(fields), *lines[1:]]) + "\n")


@pytest.mark.parametrize("fs", ["0.05", "0.0001", "0", "1"])
def test_ecg_with_implausible_fs_refused_in_bounded_memory(tmp_path: Path, fs: str) -> None:
    header = write_ecg(tmp_path)
    set_fs(header, fs)
    outcome = run_bounded("ecg", header)
    assert outcome["outcome"] == "refused" and outcome["kind"] == "bad_sampling_rate"
    assert f"{float(fs):g} Hz" in outcome["reason"] and "plausible" in outcome["reason"]


@pytest.mark.parametrize("fs", ["0.05", "0.0001"])
def test_uploaded_ecg_with_implausible_fs_refused_in_bounded_memory(
    tmp_path: Path, fs: str
) -> None:
    header = write_ecg(tmp_path)
    set_fs(header, fs)
    outcome = run_bounded("upload", tmp_path, header.name, header.with_suffix(".dat").name)
    assert outcome["outcome"] == "refused"
    assert "sampling frequency" in outcome["reason"] and "plausible" in outcome["reason"]


def rle_dicom(path: Path, rows: int, columns: int) -> Path:
    """A real RLE Lossless DICOM of 64 x 64 pixels whose header then declares rows x columns."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = 64, 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(path, enforce_file_format=True)
    declared = pydicom.dcmread(path)
    declared.Rows, declared.Columns = rows, columns  # the lie: only the header changes
    declared.save_as(path)
    return path


def test_rle_dicom_declaring_60000_squared_refused_in_bounded_memory(tmp_path: Path) -> None:
    path = rle_dicom(tmp_path / "huge.dcm", 60000, 60000)
    assert path.stat().st_size < 100_000
    outcome = run_bounded("cxr", path)
    assert outcome == {
        "outcome": "refused",
        "kind": "too_large",
        "reason": outcome["reason"],
    }
    assert "60000 x 60000" in outcome["reason"]


def test_ordinary_rle_dicom_still_reads(tmp_path: Path) -> None:
    outcome = run_bounded("cxr", rle_dicom(tmp_path / "ok.dcm", 64, 64))
    assert outcome == {"outcome": "accepted"}


def understating_zip(path: Path, header: Path, declared: int = 1000) -> Path:
    """A zip of a real .hea and a 200 MB .dat of zeros whose headers claim `declared` bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(header, header.name)
        with archive.open(header.with_suffix(".dat").name, "w", force_zip64=False) as member:
            block = bytes(1 << 20)
            for _ in range(200):
                member.write(block)
    data = bytearray(path.read_bytes())
    dat_name = header.with_suffix(".dat").name.encode()
    # Local file header: PK\3\4 ... uncompressed size at +22; central directory: PK\1\2, +24.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(dat_name)] == dat_name:
                data[start + offset : start + offset + 4] = struct.pack("<I", declared)
            start += 4
    path.write_bytes(bytes(data))
    return path


def test_zip_understating_its_size_refused_in_bounded_memory(tmp_path: Path) -> None:
    header = write_ecg(tmp_path / "record")
    archive = understating_zip(tmp_path / "ecg.zip", header)
    assert archive.stat().st_size < 2 * 2**20
    outcome = run_bounded("upload", tmp_path, "ecg.zip")
    assert outcome["outcome"] == "refused"
    assert "unpacks to more than" in outcome["reason"] or "corrupt" in outcome["reason"]
