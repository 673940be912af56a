"""12-lead ECG records (WFDB) into fixed tensors: float32 [12, 5000], mV, canonical lead order.

Each rule real files need lives in one function below:

- leads found by name, case-insensitively (``aVF``, ``AVF``, ``avf``), and reordered to
  I II III aVR aVL aVF V1-V6: MIMIC-IV-ECG stores aVF *before* aVL; extra leads (the Frank
  leads vx vy vz of PTB) are ignored; a missing lead quarantines the record;
- units from the header (``mV``, lowercase ``mv`` of PTB-XL/CinC, ``uV``, ``V``) into mV;
- header checksums verified against the samples: a header that disagrees with its data;
- NaN runs (WFDB's invalid sample) up to ``max_gap_s`` interpolated, longer runs, too many
  NaN or a flat lead quarantine the record;
- resampled to 500 Hz (polyphase, exact rational ratio) and cropped/padded to 10 s;
- the header is checked against plausibility limits before any sample is read
  (`check_header`): sampling frequency, duration, signal count, signal formats and
  signal-file names, so that a few bytes of header can neither make resampling take
  gigabytes (fs = 0.05 Hz) nor point the reader at a file outside the record's folder.

Any WFDB signal format wfdb-python reads works: MIMIC-IV-ECG's format 16 ``.dat`` and the
PhysioNet/CinC ``.mat`` records (format ``16x1+24``) alike. Format 16 single-file records
(all of MIMIC-IV-ECG) take a fast path that parses the header and memory-reads the samples
(wfdb-python's header parser costs ~15 ms a record); tests hold it equal to wfdb's result.
"""

from __future__ import annotations

import math
import os
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
# Plausibility limits of a 12-lead ECG record, checked on the header before reading samples.
# They bound memory: at most MAX_SIGNALS x MAX_FS_HZ x MAX_DURATION_S samples (~31 MB float64).
MIN_FS_HZ = 100.0  # PTB-XL's low-rate version; below it a 500 Hz ECG cannot be recovered
MAX_FS_HZ = 2000.0  # high-resolution research ECGs; MIMIC-IV-ECG is 500 Hz
MAX_DURATION_S = 60.0  # a resting ECG is 10 s; longer is a Holter or a wrong header
MIN_SIGNALS = 12  # the 12 leads the tensor holds
MAX_SIGNALS = 32  # 12 leads plus Frank leads and spares
MAX_SIGNAL_FILE_BYTES = 64 * 2**20  # a 60 s, 32-signal, 2 kHz record in 32-bit samples is 15 MB
WFDB_DEFAULT_FS = 250.0  # what WFDB assumes when the header gives no frequency

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


@dataclass(frozen=True)
class HeaderFacts:
    """What a WFDB header declares: signals, frequency (Hz), samples (None: not given), files."""

    n_sig: int
    fs: float
    sig_len: int | None
    signal_files: tuple[str, ...]


def _header_lines(header_file: Path) -> list[str]:
    """The header's non-empty, non-comment lines."""
    return [
        line.strip()
        for line in header_file.read_text(errors="replace").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _bad_header(header_file: Path, reason: str) -> InvalidRecord:
    return InvalidRecord(header_file, reason, kind="bad_header")


def check_header(header_file: Path) -> HeaderFacts:
    """Read a header's record and signal lines and refuse what no 12-lead ECG can be.

    Refused (InvalidRecord with a readable reason): a sampling frequency outside
    [MIN_FS_HZ, MAX_FS_HZ] (``bad_sampling_rate``), a duration over MAX_DURATION_S
    (``too_long``) or under MIN_DURATION_S (``too_short``), a signal count outside
    [MIN_SIGNALS, MAX_SIGNALS] or that disagrees with the signal lines, and a multi-segment
    record (``bad_header``), a format code WFDB does not define (``bad_format``), and a
    signal file outside the record's folder (``path_outside_root``). The duration comes
    from the header's number of samples or, where it gives none, from the signal files'
    sizes: either way nothing longer than the limit is decoded.
    """
    lines = _header_lines(header_file)
    if not lines:
        raise _bad_header(header_file, "header has no record line")
    fields = lines[0].split()
    if len(fields) < 2 or not fields[1].isdigit():
        raise _bad_header(header_file, "record line gives no number of signals")
    if "/" in fields[0]:  # "name/segments": the following lines are segments, not signals
        raise _bad_header(header_file, "multi-segment records are not supported")
    n_sig = int(fields[1])
    if n_sig == 0:
        raise _bad_header(header_file, "header declares no signals")
    if n_sig > MAX_SIGNALS:
        raise _bad_header(header_file, f"{n_sig} signals declared (at most {MAX_SIGNALS})")
    fs = WFDB_DEFAULT_FS
    if len(fields) > 2:
        try:
            fs = float(re.split(r"[/(]", fields[2])[0])
        except ValueError:
            raise _bad_header(header_file, "sampling frequency is not a number") from None
    if not (math.isfinite(fs) and MIN_FS_HZ <= fs <= MAX_FS_HZ):
        raise InvalidRecord(
            header_file,
            f"sampling frequency {fs:g} Hz is outside the plausible "
            f"{MIN_FS_HZ:g}-{MAX_FS_HZ:g} Hz of an ECG",
            kind="bad_sampling_rate",
        )
    sig_len = None
    if len(fields) > 3:
        if not fields[3].isdigit():
            raise _bad_header(header_file, "number of samples is not a whole number")
        sig_len = int(fields[3])
        _check_duration(header_file, sig_len / fs)
    signals = [line.split() for line in lines[1:]]
    if len(signals) != n_sig:
        raise _bad_header(
            header_file, f"header declares {n_sig} signals but describes {len(signals)}"
        )
    if n_sig < MIN_SIGNALS:  # lead_order needs the 12 leads: refused before reading
        raise InvalidRecord(
            header_file,
            f"header declares {n_sig} signals; a 12-lead ECG needs at least {MIN_SIGNALS} "
            f"({', '.join(CANONICAL_ECG_LEADS)}), found {n_sig}",
            kind="missing_leads",
        )
    files, formats = [], []
    for number, signal in enumerate(signals, start=1):
        fmt = re.match(r"\d*", signal[1]).group() if len(signal) > 1 else ""
        if fmt not in _WFDB_FORMATS:
            raise InvalidRecord(
                header_file,
                f"signal {number} has format code {fmt or 'none'}, not a WFDB format "
                f"({', '.join(sorted(_WFDB_FORMATS, key=int))})",
                kind="bad_format",
            )
        files.append(_signal_file_name(header_file, signal[0]))
        formats.append(fmt)
    if sig_len is None:
        samples = _samples_from_file_sizes(header_file, files, formats)
        if samples is not None:
            _check_duration(header_file, samples / fs)
    return HeaderFacts(n_sig, fs, sig_len, tuple(files))


def _samples_from_file_sizes(header_file: Path, files: list[str], formats: list[str]) -> int | None:
    """Samples per signal that the signal files hold, for a header that gives no number.

    WFDB then reads the whole file, so its size is the record's length: bytes / (bytes per
    sample x signals in the file), the most over the files. None when no file is there
    (reading reports it missing). A compressed (FLAC) format has no fixed size per sample
    and must state its length.
    """
    per_file: dict[str, float] = {}
    for name, fmt in zip(files, formats, strict=True):
        if fmt not in _BYTES_PER_SAMPLE:
            raise _bad_header(
                header_file,
                f"format {fmt} is compressed: the header must give its number of samples",
            )
        per_file[name] = per_file.get(name, 0.0) + _BYTES_PER_SAMPLE[fmt]
    samples = [
        int((header_file.parent / name).stat().st_size / frame_bytes)
        for name, frame_bytes in per_file.items()
        if (header_file.parent / name).is_file()
    ]
    return max(samples) if samples else None


# Signal formats WFDB defines (and wfdb-python reads): PhysioNet's "header(5)" format table.
_WFDB_FORMATS = frozenset(
    {"8", "16", "24", "32", "61", "80", "160", "212", "310", "311", "508", "516", "524"}
)
# Stored bytes per sample of each uncompressed format (212: 3 bytes per 2 samples, 310 and
# 311: 4 bytes per 3); the FLAC formats 508/516/524 have none.
_BYTES_PER_SAMPLE = {
    "8": 1.0,
    "16": 2.0,
    "24": 3.0,
    "32": 4.0,
    "61": 2.0,
    "80": 1.0,
    "160": 2.0,
    "212": 1.5,
    "310": 4 / 3,
    "311": 4 / 3,
}


def _check_duration(header_file: Path, duration: float) -> None:
    """Refuse a record shorter than MIN_DURATION_S or longer than MAX_DURATION_S."""
    if duration < MIN_DURATION_S:
        raise InvalidRecord(
            header_file,
            f"{duration:.2f} s long (at least {MIN_DURATION_S:g} s needed)",
            kind="too_short",
        )
    if duration > MAX_DURATION_S:
        raise InvalidRecord(
            header_file,
            f"{duration:g} s long (at most {MAX_DURATION_S:g} s: a resting ECG is 10 s)",
            kind="too_long",
        )


def _signal_file_name(header_file: Path, name: str) -> str:
    """A signal-file name of the header, refused unless it lies in the record's folder."""
    # ".." resolved as text, links not followed (a linked-in release folder is fine).
    folder = Path(os.path.abspath(header_file.parent))
    if name == "~":  # WFDB: signals stored in no file
        raise _bad_header(header_file, "signals are stored in no file ('~')")
    target = Path(os.path.abspath(folder / name))
    if Path(name).is_absolute() or not target.is_relative_to(folder):
        raise InvalidRecord(
            header_file,
            f"signal file {name!r} lies outside the record's folder",
            kind="path_outside_root",
        )
    if target.is_file() and target.stat().st_size > MAX_SIGNAL_FILE_BYTES:
        raise InvalidRecord(
            header_file,
            f"signal file {name} holds {target.stat().st_size / 2**20:.0f} MB "
            f"(at most {MAX_SIGNAL_FILE_BYTES / 2**20:.0f} MB for one ECG)",
            kind="too_long",
        )
    return name


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
    lines = _header_lines(header_file)
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
        raise InvalidRecord(
            header_file, f"header not readable by wfdb ({_describe(error)})", kind="unreadable"
        ) from None
    # Problems with the samples are blamed on the signal file, the others on the header.
    signal_file = base.parent / header.file_name[0] if header.file_name else header_file
    try:
        record = wfdb.rdrecord(str(base), physical=False)
    except FileNotFoundError:
        raise InvalidRecord(signal_file, "signal file not found", kind="missing_file") from None
    except Exception as error:
        raise InvalidRecord(
            signal_file, f"samples not readable by wfdb ({_describe(error)})", kind="unreadable"
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


def _describe(error: Exception) -> str:
    """A library exception as a sentence: its message, or its type where the message is bare."""
    text = str(error).strip()
    if isinstance(error, KeyError | IndexError) or len(text) < 8:
        return f"{type(error).__name__} {text}".strip()
    return text


def read_raw_record(path: str | Path, verify_checksums: bool = True) -> RawRecord:
    """Read a WFDB record as stored (fast path for format 16, wfdb-python otherwise).

    The header is checked first (`check_header`): nothing the limits refuse is read.
    """
    base = record_base(path)
    header_file = base.with_suffix(".hea")
    if not header_file.is_file():
        raise InvalidRecord(header_file, "header file (.hea) not found", kind="missing_file")
    check_header(header_file)
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
    if not MIN_FS_HZ <= raw.fs <= MAX_FS_HZ:  # wfdb's reading of a header check_header passed
        raise InvalidRecord(
            raw.header_file, f"sampling frequency {raw.fs:g} Hz", kind="bad_sampling_rate"
        )
    _check_duration(raw.header_file, raw.physical.shape[0] / raw.fs)
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
