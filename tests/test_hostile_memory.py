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
from app.web.uploads import UploadError, read_ecg_upload

def address_space(field="VmSize:"):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

baseline = address_space()
peak_before = address_space("VmPeak:")
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
    outcome = {"outcome": "accepted"}
except (InvalidRecord, UploadError) as error:
    outcome = {"outcome": "refused", "kind": getattr(error, "kind", ""), "reason": error.reason}
except MemoryError:
    outcome = {"outcome": "memory_error"}
# How far the read raised the address space's peak (MB): what it allocated at most.
outcome["grown_mb"] = (address_space("VmPeak:") - peak_before) / 2**20
print(json.dumps(outcome))
"""


def run_bounded(kind: str, path: Path, *names: str, growth: bool = False) -> dict:
    """Run one case under RLIMIT_AS = baseline + 1 GB; its JSON outcome (with `grown_mb`,
    the MB its read raised the peak address space by, when `growth`)."""
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
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    grown = outcome.pop("grown_mb")
    return {**outcome, "grown_mb": grown} if growth else outcome


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


def ecg_without_sig_len(folder: Path, signals: int, fmt: str, dat_bytes: int) -> Path:
    """A real record written with wfdb in format `fmt` (16 or 80), its .dat grown to
    `dat_bytes` with samples of 0 (so its checksums still hold: the reader gets as far as
    decoding) and the number of samples removed from its record line (WFDB then reads the
    whole file)."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(5000) / 500.0
    signal = np.stack([0.5 * np.sin(2 * np.pi * (1 + i / 10) * t) for i in range(signals)], 1)
    wfdb.wrsamp(
        "40000002",
        fs=500,
        units=["mV"] * signals,
        sig_name=list(MIMIC_ECG_LEADS[:signals]),
        p_signal=signal,
        fmt=[fmt] * signals,
        adc_gain=[100.0] * signals,
        baseline=[0] * signals,
        write_dir=str(folder),
    )
    header = folder / "40000002.hea"
    dat = header.with_suffix(".dat")
    zero = b"\x80" if fmt == "80" else b"\x00"  # format 80 is offset binary: 0 is 0x80
    with open(dat, "ab") as handle:
        handle.write(zero * (dat_bytes - dat.stat().st_size))
    lines = header.read_text().splitlines()
    lines[0] = " ".join(lines[0].split()[:3])  # name, signals, fs: no sig_len
    header.write_text("\n".join(lines) + "\n")
    return header


@pytest.mark.parametrize(("signals", "fmt"), [(12, "80"), (1, "80")])
def test_ecg_without_sig_len_and_a_60_mb_signal_file_refused_in_bounded_memory(
    tmp_path: Path, signals: int, fmt: str
) -> None:
    header = ecg_without_sig_len(tmp_path, signals, fmt, 60 * 2**20)
    assert len(header.read_text().splitlines()[0].split()) == 3
    outcome = run_bounded("ecg", header, growth=True)
    assert outcome["outcome"] == "refused", outcome
    # Refused from the header and the file's size: no sample read (decoding would take
    # over 500 MB before any duration could be seen).
    assert outcome["grown_mb"] < 100, outcome
    if signals == 12:  # 60 MiB / (12 signals x 1 byte) at 500 Hz: 10485.8 s (1 GB decoded)
        assert outcome["kind"] == "too_long" and "10485.8 s long" in outcome["reason"]
    else:  # the 12 leads are needed anyway: refused before the file's size matters
        assert outcome["kind"] == "missing_leads" and "declares 1 signals" in outcome["reason"]


@pytest.mark.parametrize("fmt", ["16", "80"])
def test_ecg_without_sig_len_of_ordinary_size_still_reads(tmp_path: Path, fmt: str) -> None:
    header = ecg_without_sig_len(tmp_path, 12, fmt, 12 * 5000 * (2 if fmt == "16" else 1))
    assert run_bounded("ecg", header) == {"outcome": "accepted"}


def rle_dicom(path: Path, rows: int, columns: int, bits: int | None = None) -> Path:
    """A real RLE Lossless DICOM of 64 x 64 pixels whose header then declares rows x columns
    (and, when given, `bits` BitsAllocated)."""
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
    if bits is not None:
        declared.BitsAllocated, declared.BitsStored, declared.HighBit = bits, bits, bits - 1
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


def test_dicom_under_the_pixel_limit_but_over_the_decoded_bytes_refused(tmp_path: Path) -> None:
    # 6000 x 6000 = 36 M pixels passes the pixel count; as 32-bit samples it decodes to 137 MB.
    path = rle_dicom(tmp_path / "deep.dcm", 6000, 6000, bits=32)
    outcome = run_bounded("cxr", path)
    assert outcome["outcome"] == "refused" and outcome["kind"] == "too_large", outcome
    assert "1 x 32-bit samples: 137 MB decoded" in outcome["reason"]


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
