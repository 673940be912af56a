"""Deliberately broken files, so that preprocessing's quarantine can be checked against them.

Each kind breaks one thing a real download can get wrong; DIR/CORRUPTED.csv lists every
broken file with its kind and reason (columns: kind, file, subject_id, hadm_id, reason;
file relative to DIR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from symile_clinical.formats.atomic import write_text_atomic

ECG_TRUNCATED = "ecg_truncated_dat"
ECG_HEADER_MISMATCH = "ecg_header_mismatch"
CXR_NO_PIXEL_DATA = "cxr_no_pixel_data"
CXR_NOT_AN_IMAGE = "cxr_not_an_image"
LAB_NON_NUMERIC = "lab_non_numeric"
ECG_KINDS = (ECG_TRUNCATED, ECG_HEADER_MISMATCH)
CXR_KINDS = (CXR_NO_PIXEL_DATA, CXR_NOT_AN_IMAGE)
CORRUPTED_COLUMNS = ("kind", "file", "subject_id", "hadm_id", "reason")
NON_NUMERIC_TEXTS = ("ERROR", "1..2", "12,5", "see comment", "#VALUE!")


def truncate_dat(dat_path: Path, rng: np.random.Generator) -> str:
    """Cut a signal file to a fraction of its bytes (odd length: a partial sample); reason."""
    size = dat_path.stat().st_size
    keep = int(size * rng.uniform(0.2, 0.8)) | 1
    with open(dat_path, "r+b") as fh:
        fh.truncate(keep)
    return f"signal file truncated to {keep} of {size} bytes"


def mismatch_header(hea_path: Path) -> str:
    """Rewrite a 12-lead, 5000-sample header to declare 8 signals x 7500 samples; reason.

    The .dat still holds 12 x 5000 int16 samples (the same byte count), so a reader that
    trusts the header gets 8 scrambled leads and wrong checksums.
    """
    lines = hea_path.read_text().splitlines()
    fields = lines[0].split()
    n_sig, sig_len = int(fields[1]), int(fields[3])
    fields[1], fields[3] = "8", str(n_sig * sig_len // 8)
    comments = [line for line in lines[1:] if line.startswith("#")]
    signals = [line for line in lines[1:] if not line.startswith("#")][:8]
    text = "\n".join([" ".join(fields), *signals, *comments]) + "\n"
    write_text_atomic(hea_path, text)
    return f"header declares 8 signals x {fields[3]} samples; the .dat holds {n_sig} x {sig_len}"
