"""12-lead ECG records (WFDB) into fixed tensors: float32 [12, 5000], mV, canonical lead order.

Each rule real files need lives in one function below:

- leads found by name, case-insensitively (``aVF``, ``AVF``, ``avf``), and reordered to
  I II III aVR aVL aVF V1-V6: MIMIC-IV-ECG stores aVF *before* aVL; extra leads (the Frank
  leads vx vy vz of PTB) are ignored; a missing lead quarantines the record;
- units from the header (``mV``, lowercase ``mv`` of PTB-XL/CinC, ``uV``, ``V``) into mV;
- header checksums verified against the samples: a header that disagrees with its data;
- NaN runs (WFDB's invalid sample) up to ``max_gap_s`` interpolated, longer runs, too many
  NaN or a flat lead quarantine the record;
- resampled to 500 Hz (polyphase, exact rational ratio) and cropped/padded to 10 s.

Any WFDB signal format wfdb-python reads works: MIMIC-IV-ECG's format 16 ``.dat`` and the
PhysioNet/CinC ``.mat`` records (format ``16x1+24``) alike. Format 16 single-file records
(all of MIMIC-IV-ECG) take a fast path that parses the header and memory-reads the samples
(wfdb-python's header parser costs ~15 ms a record); tests hold it equal to wfdb's result.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from preprocessing.errors import InvalidRecord
from preprocessing.layout import CANONICAL_ECG_LEADS, ECG_SAMPLES, ECG_SAMPLING_HZ

NORMALISATIONS = ("minmax", "standardise")
MAX_GAP_S = 0.5  # NaN runs up to this long are interpolated; longer ones quarantine
MAX_NAN_FRACTION = 0.1  # more NaN than this share of a lead quarantines the record
MIN_DURATION_S = 2.0  # shorter records are not comparable to 10 s ones
FLAT_LEAD_MV = 1e-3  # peak-to-peak below this (mV) is a disconnected lead

_UNIT_TO_MV = {"mv": 1.0, "": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


def _lead_key(name: str) -> str:
    """Canonical spelling of a lead name for matching: 'avf', 'AVF', 'Lead aVF' -> 'AVF'."""
    key = name.strip().upper().replace(" ", "")
    return key.removeprefix("LEAD")


_CANONICAL_KEYS = tuple(_lead_key(name) for name in CANONICAL_ECG_LEADS)


def record_base(path: str | Path) -> Path:
    """The WFDB record path without extension (accepts ``.../40689238`` or ``....hea``)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in {".hea", ".dat", ".mat"} else path


def lead_order(sig_names: list[str], path: str | Path = "") -> np.ndarray:
    """Indices that pick the 12 canonical leads out of a record's signals, int64 [12]."""
    keys = [_lead_key(name) for name in sig_names]
    duplicated = sorted({k for k in keys if keys.count(k) > 1 and k in _CANONICAL_KEYS})
    if duplicated:
        raise InvalidRecord(path, f"duplicate leads {duplicated}", kind="duplicate_leads")
    missing = [
        lead
        for lead, key in zip(CANONICAL_ECG_LEADS, _CANONICAL_KEYS, strict=True)
        if key not in keys
    ]
    if missing:
        raise InvalidRecord(
            path,
            f"12 leads expected, found {len(sig_names)}; missing {', '.join(missing)}",
            kind="missing_leads",
        )
    return np.array([keys.index(key) for key in _CANONICAL_KEYS], dtype=np.int64)


def unit_scale(units: list[str], path: str | Path = "") -> np.ndarray:
    """Factor per signal that converts the header's physical units into mV, float64."""
    scale = []
    for unit in units:
        factor = _UNIT_TO_MV.get((unit or "").strip().lower())
        if factor is None:
            raise InvalidRecord(path, f"unit {unit!r} is not a voltage", kind="bad_units")
        scale.append(factor)
    return np.asarray(scale, dtype=np.float64)


def fill_nan_gaps(
    signal: np.ndarray,
    fs: float,
    max_gap_s: float = MAX_GAP_S,
    max_nan_fraction: float = MAX_NAN_FRACTION,
    path: str | Path = "",
    lead_names: tuple[str, ...] = CANONICAL_ECG_LEADS,
) -> np.ndarray:
    """Linearly interpolate short NaN runs of [leads, samples]; too long or too many: refuse."""
    nan = np.isnan(signal)
    if not nan.any():
        return signal
    out = signal.copy()
    max_gap = max(1, round(max_gap_s * fs))
    samples = np.arange(signal.shape[1])
    for lead in np.flatnonzero(nan.any(axis=1)):
        mask = nan[lead]
        fraction = mask.mean()
        if fraction > max_nan_fraction:
            raise InvalidRecord(
                path,
                f"lead {lead_names[lead]} is {fraction:.0%} NaN (limit {max_nan_fraction:.0%})",
                kind="too_many_nan",
            )
        # Runs of True: starts and ends from the edges of the padded mask.
        edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        longest = int((ends - starts).max())
        if longest > max_gap:
            raise InvalidRecord(
                path,
                f"lead {lead_names[lead]} has a {longest / fs:.2f} s NaN run "
                f"(limit {max_gap_s:.2f} s)",
                kind="nan_gap",
            )
        # np.interp holds the edge value for leading/trailing runs.
        out[lead, mask] = np.interp(samples[mask], samples[~mask], signal[lead, ~mask])
    return out


def resample(signal: np.ndarray, fs: float, target_hz: int = ECG_SAMPLING_HZ) -> np.ndarray:
    """Polyphase resampling of [leads, samples] from fs to target_hz (anti-aliased)."""
    if math.isclose(fs, target_hz):
        return signal
    from scipy.signal import resample_poly

    ratio = Fraction(target_hz / fs).limit_denominator(1000)
    return resample_poly(signal, ratio.numerator, ratio.denominator, axis=1)


def crop_or_pad(signal: np.ndarray, samples: int = ECG_SAMPLES) -> np.ndarray:
    """First `samples` samples of [leads, n]; shorter records padded at the end with zeros."""
    if signal.shape[1] >= samples:
        return signal[:, :samples]
    padded = np.zeros((signal.shape[0], samples), dtype=signal.dtype)
    padded[:, : signal.shape[1]] = signal
    return padded


@dataclass
class RawRecord:
    """A record as stored: physical samples float64 [n, signals] (NaN = invalid), header facts."""

    sig_name: list[str]
    units: list[str]
    fs: float
    physical: np.ndarray
    header_file: Path
    signal_file: Path


_SIGNAL_LINE = re.compile(
    r"^(?P<file>\S+)\s+16\s+(?P<gain>\S+)\s+(?P<res>\d+)\s+(?P<zero>-?\d+)\s+"
    r"(?P<init>-?\d+)\s+(?P<checksum>-?\d+)\s+(?P<block>\d+)\s+(?P<name>\S.*?)\s*$"
)
_GAIN = re.compile(
    r"^(?P<gain>[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)(\((?P<base>-?\d+)\))?(/(?P<unit>\S+))?$"
)
_FORMAT16_INVALID = -32768  # WFDB's invalid-sample value for format 16


def _checksum_mismatch(digital: np.ndarray, checksums: list[int], names: list[str]) -> list[str]:
    """Leads whose header checksum (16-bit sum of the samples) disagrees with the samples."""
    sums = digital.astype(np.int64).sum(axis=0) % 65536
    expected = np.asarray(checksums, dtype=np.int64) % 65536
    return [names[i] for i in np.flatnonzero(sums != expected)]


def _read_format16(base: Path, verify_checksums: bool) -> RawRecord | None:
    """Fast path for MIMIC-IV-ECG's layout: one .dat, format 16, little-endian, interleaved.

    Returns None for anything else (other formats, multi-segment, odd headers, a .dat
    whose size differs from the header's promise); wfdb-python then reads the record.
    """
    header_file = base.with_suffix(".hea")
    lines = [
        line.strip()
        for line in header_file.read_text(errors="replace").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        return None
    fields = lines[0].split()
    if len(fields) < 4 or "/" in fields[0]:
        return None
    try:
        n_sig, sig_len = int(fields[1]), int(fields[3])
        fs = float(re.split(r"[/(]", fields[2])[0])
    except ValueError:
        return None
    matches = [_SIGNAL_LINE.match(line) for line in lines[1 : 1 + n_sig]]
    gains = [_GAIN.match(m["gain"]) if m else None for m in matches]
    if n_sig < 1 or len(matches) != n_sig or not all(matches) or not all(gains):
        return None
    files = {m["file"] for m in matches}
    signal_file = base.parent / matches[0]["file"]
    if len(files) != 1 or not signal_file.is_file():
        return None
    if signal_file.stat().st_size != 2 * n_sig * sig_len:
        return None
    digital = np.fromfile(signal_file, dtype="<i2").reshape(sig_len, n_sig)
    names = [m["name"] for m in matches]
    if verify_checksums:
        wrong = _checksum_mismatch(digital, [int(m["checksum"]) for m in matches], names)
        if wrong:
            raise InvalidRecord(
                header_file,
                f"header checksum disagrees with the samples of {wrong}",
                kind="checksum",
            )
    gain = np.array([float(g["gain"]) or 200.0 for g in gains])  # 0 means WFDB's default
    baseline = np.array(
        [
            int(g["base"]) if g["base"] is not None else int(m["zero"])
            for g, m in zip(gains, matches, strict=True)
        ]
    )
    physical = (digital - baseline) / gain
    physical[digital == _FORMAT16_INVALID] = np.nan
    units = [g["unit"] or "mV" for g in gains]
    return RawRecord(names, units, fs, physical, header_file, signal_file)


def _read_with_wfdb(base: Path, verify_checksums: bool) -> RawRecord:
    """Any record wfdb-python reads (CinC .mat with format 16x1+24, format 212, ...)."""
    import wfdb

    header_file = base.with_suffix(".hea")
    try:
        header = wfdb.rdheader(str(base))
    except Exception as error:  # wfdb raises ValueError, IndexError and others alike
        raise InvalidRecord(header_file, f"unreadable header: {error}", kind="unreadable") from None
    # Problems with the samples are blamed on the signal file, the others on the header.
    signal_file = base.parent / header.file_name[0] if header.file_name else header_file
    try:
        record = wfdb.rdrecord(str(base), physical=False)
    except FileNotFoundError:
        raise InvalidRecord(signal_file, "signal file not found", kind="missing_file") from None
    except Exception as error:
        raise InvalidRecord(
            signal_file, f"unreadable samples: {error}", kind="unreadable"
        ) from None
    if record.d_signal is None or not record.fs:
        raise InvalidRecord(header_file, "record has no signals", kind="unreadable")
    if verify_checksums and record.checksum:
        wrong = _checksum_mismatch(record.d_signal, record.checksum, list(record.sig_name))
        if wrong:
            raise InvalidRecord(
                header_file,
                f"header checksum disagrees with the samples of {wrong}",
                kind="checksum",
            )
    physical = record.dac(return_res=64)  # [n, signals], NaN where the sample is invalid
    return RawRecord(
        list(record.sig_name),
        list(record.units),
        float(record.fs),
        physical,
        header_file,
        signal_file,
    )


def read_raw_record(path: str | Path, verify_checksums: bool = True) -> RawRecord:
    """Read a WFDB record as stored (fast path for format 16, wfdb-python otherwise)."""
    base = record_base(path)
    header_file = base.with_suffix(".hea")
    if not header_file.is_file():
        raise InvalidRecord(header_file, "header file (.hea) not found", kind="missing_file")
    raw = _read_format16(base, verify_checksums)
    return raw if raw is not None else _read_with_wfdb(base, verify_checksums)


def load_ecg_record(
    path: str | Path,
    max_gap_s: float = MAX_GAP_S,
    max_nan_fraction: float = MAX_NAN_FRACTION,
    verify_checksums: bool = True,
) -> np.ndarray:
    """Read one WFDB record into float32 [12, 5000] mV, leads I II III aVR aVL aVF V1-V6.

    Raises InvalidRecord (with the file and a reason) for anything that cannot be made into
    that tensor faithfully; see the module docstring for the rules.
    """
    raw = read_raw_record(path, verify_checksums)
    order = lead_order(raw.sig_name, raw.header_file)
    duration = raw.physical.shape[0] / raw.fs
    if duration < MIN_DURATION_S:
        raise InvalidRecord(
            raw.header_file,
            f"{duration:.2f} s long (at least {MIN_DURATION_S} s needed)",
            kind="too_short",
        )
    scale = unit_scale(raw.units, raw.header_file)[order]
    physical = raw.physical[:, order].T * scale[:, None]  # [12, n] mV
    signal = fill_nan_gaps(physical, raw.fs, max_gap_s, max_nan_fraction, raw.signal_file)
    flat = [CANONICAL_ECG_LEADS[i] for i in np.flatnonzero(np.ptp(signal, axis=1) < FLAT_LEAD_MV)]
    if flat:
        raise InvalidRecord(raw.signal_file, f"flat leads {flat}", kind="flat_lead")
    signal = crop_or_pad(resample(signal, raw.fs), ECG_SAMPLES)
    return np.ascontiguousarray(signal, dtype=np.float32)


def remove_baseline(signal: np.ndarray, fs: float = ECG_SAMPLING_HZ) -> np.ndarray:
    """High-pass (0.5 Hz, zero-phase Butterworth) of [leads, samples] to remove wander."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(2, 0.5, btype="highpass", fs=fs, output="sos")
    return sosfiltfilt(sos, signal, axis=-1)


def normalise_ecg(signal: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Normalise float [12, samples] mV (or a batch [..., 12, samples]); float32 out.

    ``minmax``: the paper's, min-max over the whole record (all leads) to [-1, 1].
    ``standardise``: per lead, baseline removed then zero mean and unit variance.
    """
    x = np.asarray(signal, dtype=np.float64)
    if method == "minmax":
        low = x.min(axis=(-2, -1), keepdims=True)
        high = x.max(axis=(-2, -1), keepdims=True)
        span = np.where(high > low, high - low, 1.0)
        out = 2.0 * (x - low) / span - 1.0
    elif method == "standardise":
        x = remove_baseline(x)
        std = x.std(axis=-1, keepdims=True)
        out = (x - x.mean(axis=-1, keepdims=True)) / np.where(std > 0, std, 1.0)
    else:
        raise ValueError(f"ECG normalisation {method!r} unknown; choose from {NORMALISATIONS}")
    return out.astype(np.float32)
