"""Write one ECG as a MIMIC-IV-ECG WFDB record (header + format-16 signal file).

``write_ecg_record`` writes the two files directly: wfdb.wrsamp spends about 250 ms per
record validating header fields (through pandas lookups), which alone would put 2,000
admissions past a minute. The bytes are the same as wfdb.wrsamp's for these records:
``write_ecg_record_with_wfdb`` is the reference, and the tests compare the two byte for byte.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np

from preprocessing.layout import ECG_SAMPLES, ECG_SAMPLING_HZ, MIMIC_ECG_LEADS, ecg_record_path
from preprocessing.synth.ecg_waveform import ECG_GAIN_PER_MV, to_digital
from symile_clinical.formats.atomic import write_bytes_atomic, write_text_atomic


def header_text(study_id: int, subject_id: int, ecg_time: datetime, digital: np.ndarray) -> str:
    """The .hea text for int16 [5000, 12] samples, as wfdb.wrsamp writes it for MIMIC-IV-ECG."""
    n_samples, n_leads = digital.shape
    # WFDB checksums: 16-bit sum of each signal's samples.
    checksums = digital.astype(np.int64).sum(axis=0) % 65536
    lines = [
        f"{study_id} {n_leads} {ECG_SAMPLING_HZ} {n_samples} "
        f"{ecg_time:%H:%M:%S} {ecg_time:%d/%m/%Y}"
    ]
    for lead, name in enumerate(MIMIC_ECG_LEADS):
        lines.append(
            f"{study_id}.dat 16 {ECG_GAIN_PER_MV:.1f}(0)/mV 16 0 "
            f"{int(digital[0, lead])} {int(checksums[lead])} 0 {name}"
        )
    lines.append(f"# <subject_id>: {subject_id}")
    return "\n".join(lines) + "\n"


def write_ecg_record(
    ecg_root: Path, subject_id: int, study_id: int, ecg_time: datetime, signal_mv: np.ndarray
) -> str:
    """Write ``files/pNNNN/pN../sN../N.{hea,dat}`` under ecg_root; returns the relative path.

    signal_mv: float [5000, 12] in mV, leads in MIMIC order. The header matches a real
    MIMIC-IV-ECG v1.0 header: 500 Hz, format 16, gain 200.0(0)/mV, base time and date,
    and a ``# <subject_id>: N`` comment. The .dat is interleaved little-endian int16.
    """
    if signal_mv.shape != (ECG_SAMPLES, len(MIMIC_ECG_LEADS)):
        raise ValueError(f"ECG must be [{ECG_SAMPLES}, 12], got {list(signal_mv.shape)}")
    rel = ecg_record_path(subject_id, study_id)
    final_dir = ecg_root / Path(rel).parent
    final_dir.mkdir(parents=True, exist_ok=True)
    digital = to_digital(signal_mv)
    # Signal first, header last: a record whose header exists is complete.
    write_bytes_atomic(final_dir / f"{study_id}.dat", digital.astype("<i2").tobytes())
    write_text_atomic(
        final_dir / f"{study_id}.hea", header_text(study_id, subject_id, ecg_time, digital)
    )
    return rel


def write_ecg_record_with_wfdb(
    out_dir: Path, subject_id: int, study_id: int, ecg_time: datetime, signal_mv: np.ndarray
) -> None:
    """Reference writer: the same record through wfdb.wrsamp, into out_dir (slow)."""
    import wfdb

    n_leads = len(MIMIC_ECG_LEADS)
    with tempfile.TemporaryDirectory(prefix="wfdb-") as scratch:
        wfdb.wrsamp(
            str(study_id),
            fs=ECG_SAMPLING_HZ,
            units=["mV"] * n_leads,
            sig_name=list(MIMIC_ECG_LEADS),
            d_signal=to_digital(signal_mv),
            fmt=["16"] * n_leads,
            adc_gain=[ECG_GAIN_PER_MV] * n_leads,
            baseline=[0] * n_leads,
            comments=[f"<subject_id>: {subject_id}"],
            base_time=ecg_time.time(),
            base_date=ecg_time.date(),
            write_dir=scratch,
        )
        for suffix in (".dat", ".hea"):
            name = f"{study_id}{suffix}"
            write_bytes_atomic(out_dir / name, (Path(scratch) / name).read_bytes())
