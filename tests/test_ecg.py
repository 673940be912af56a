"""ECG reader: real WFDB records (../shared/data/ecg) and generated ones, one per rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from preprocessing.ecg import (
    _read_format16,
    _read_with_wfdb,
    fill_nan_gaps,
    load_ecg_record,
    normalise_ecg,
    record_base,
)
from preprocessing.errors import InvalidRecord
from preprocessing.layout import CANONICAL_ECG_LEADS, MIMIC_ECG_LEADS

ECG = "ecg"


def lead_signals(fs: int = 500, seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    """Distinct, non-flat test signals per canonical lead: float64 [samples, 12], mV.

    Lead i is a sine of (i + 1) Hz with amplitude 0.1 * (i + 1) mV, so each lead can be
    recognised by its amplitude after any reordering.
    """
    t = np.arange(round(fs * seconds)) / fs
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            0.1 * (i + 1) * np.sin(2 * np.pi * (i + 1) * t) + 0.001 * rng.standard_normal(t.size)
            for i in range(12)
        ],
        axis=1,
    )


def write_record(
    directory: Path,
    name: str,
    canonical: np.ndarray,
    fs: int = 500,
    lead_names: tuple[str, ...] = MIMIC_ECG_LEADS,
    units: str = "mV",
    gain: float = 200.0,
) -> Path:
    """Write canonical-order signals [samples, 12] as a WFDB record with `lead_names` order."""
    index = {lead: i for i, lead in enumerate(CANONICAL_ECG_LEADS)}
    columns = [index[_canonical_name(lead)] for lead in lead_names]
    wfdb.wrsamp(
        name,
        fs=fs,
        units=[units] * len(lead_names),
        sig_name=list(lead_names),
        p_signal=canonical[:, columns],
        fmt=["16"] * len(lead_names),
        adc_gain=[gain] * len(lead_names),
        baseline=[0] * len(lead_names),
        write_dir=str(directory),
    )
    return directory / name


def _canonical_name(lead: str) -> str:
    for canonical in CANONICAL_ECG_LEADS:
        if canonical.upper() == lead.upper():
            return canonical
    raise KeyError(lead)


# ---------------------------------------------------------------- real files


@pytest.mark.parametrize(
    "record", ["cinc2021/HR06000", "cinc2021/JS20000", "cinc2021/E07500", "cinc2021_dat/JS20000"]
)
def test_real_records_load(shared_data: Path, record: str) -> None:
    path = shared_data / ECG / record
    signal = load_ecg_record(path)
    assert signal.shape == (12, 5000) and signal.dtype == np.float32
    reference = wfdb.rdrecord(str(path)).p_signal.T  # CinC order is already canonical
    np.testing.assert_allclose(signal, reference, atol=1e-6)


def test_mat_and_dat_versions_agree(shared_data: Path) -> None:
    # HR06000 writes its unit as lowercase 'mv'; both files must give the same millivolts.
    mat = load_ecg_record(shared_data / ECG / "cinc2021/HR06000")
    dat = load_ecg_record(shared_data / ECG / "cinc2021_dat/HR06000.hea")
    np.testing.assert_array_equal(mat, dat)
    assert 0.5 < np.abs(mat).max() < 5.0  # millivolts, not microvolts or volts


def test_real_mimic_header_lead_order(shared_data: Path) -> None:
    header = wfdb.rdheader(str(shared_data / ECG / "mimic-iv-ecg-header/40689238"))
    assert header.sig_name == list(MIMIC_ECG_LEADS)  # the quirk our generated records copy
    with pytest.raises(InvalidRecord) as caught:  # its .dat is not shipped
        load_ecg_record(shared_data / ECG / "mimic-iv-ecg-header/40689238")
    assert caught.value.kind in {"missing_file", "unreadable"}


def test_record_base_accepts_header_path() -> None:
    assert record_base("a/b/40689238.hea") == Path("a/b/40689238")
    assert record_base("a/b/40689238") == Path("a/b/40689238")


# ---------------------------------------------------------------- generated, one per rule


def test_mimic_lead_order_is_reordered(tmp_path: Path) -> None:
    canonical = lead_signals()
    path = write_record(tmp_path, "40689238", canonical, lead_names=MIMIC_ECG_LEADS)
    signal = load_ecg_record(path)
    np.testing.assert_allclose(signal, canonical.T, atol=0.01)  # gain 200: 5 uV steps
    avl, avf = CANONICAL_ECG_LEADS.index("aVL"), CANONICAL_ECG_LEADS.index("aVF")
    assert np.ptp(signal[avf]) > np.ptp(signal[avl])  # aVF was written before aVL


def test_lowercase_lead_names_and_extra_leads(tmp_path: Path) -> None:
    canonical = np.concatenate([lead_signals(), lead_signals(seed=1)[:, :3]], axis=1)
    names = (*(n.lower() for n in CANONICAL_ECG_LEADS), "vx", "vy", "vz")
    wfdb.wrsamp(
        "ptb",
        fs=500,
        units=["mV"] * 15,
        sig_name=list(names),
        p_signal=canonical,
        fmt=["16"] * 15,
        adc_gain=[200.0] * 15,
        baseline=[0] * 15,
        write_dir=str(tmp_path),
    )
    signal = load_ecg_record(tmp_path / "ptb")
    np.testing.assert_allclose(signal, canonical[:, :12].T, atol=0.01)


def test_microvolts_converted(tmp_path: Path) -> None:
    canonical = lead_signals()
    path = write_record(tmp_path, "uv", canonical * 1000.0, units="uV", gain=1.0)
    np.testing.assert_allclose(load_ecg_record(path), canonical.T, atol=0.01)


def test_250hz_record_resampled_to_500(tmp_path: Path) -> None:
    canonical = lead_signals(fs=250)
    path = write_record(tmp_path, "slow", canonical, fs=250)
    signal = load_ecg_record(path)
    assert signal.shape == (12, 5000)
    t = np.arange(5000) / 500
    expected = 0.1 * np.sin(2 * np.pi * t)  # lead I: 1 Hz, 0.1 mV
    np.testing.assert_allclose(signal[0, 100:-100], expected[100:-100], atol=0.01)


def test_long_record_cropped_short_record_padded(tmp_path: Path) -> None:
    long = load_ecg_record(write_record(tmp_path, "long", lead_signals(seconds=12.0)))
    assert long.shape == (12, 5000)
    short = load_ecg_record(write_record(tmp_path, "short", lead_signals(seconds=8.0)))
    assert short.shape == (12, 5000)
    assert np.all(short[:, 4000:] == 0) and np.any(short[:, 3990:4000] != 0)


def test_eight_lead_record_is_invalid(tmp_path: Path) -> None:
    eight = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    path = write_record(tmp_path, "eight", lead_signals(), lead_names=eight)
    with pytest.raises(InvalidRecord) as caught:
        load_ecg_record(path)
    assert caught.value.kind == "missing_leads"
    assert "found 8" in caught.value.reason and "aVL" in caught.value.reason


def test_short_nan_gap_interpolated(tmp_path: Path) -> None:
    canonical = lead_signals()
    canonical[1000:1050, 3] = np.nan  # 0.1 s gap in aVR
    signal = load_ecg_record(write_record(tmp_path, "gap", canonical))
    assert np.isfinite(signal).all()
    # The gap is bridged by the straight line between the samples either side of it.
    line = np.interp(np.arange(1000, 1050), [999, 1050], signal[3, [999, 1050]])
    np.testing.assert_allclose(signal[3, 1000:1050], line, atol=1e-3)


def test_long_nan_gap_is_invalid(tmp_path: Path) -> None:
    canonical = lead_signals()
    canonical[1000:1400, 7] = np.nan  # 0.8 s
    with pytest.raises(InvalidRecord) as caught:
        load_ecg_record(write_record(tmp_path, "longgap", canonical))
    assert caught.value.kind == "nan_gap" and "V2" in caught.value.reason


def test_flat_lead_is_invalid(tmp_path: Path) -> None:
    canonical = lead_signals()
    canonical[:, 5] = 0.0
    with pytest.raises(InvalidRecord) as caught:
        load_ecg_record(write_record(tmp_path, "flat", canonical))
    assert caught.value.kind == "flat_lead" and "aVF" in caught.value.reason


def test_truncated_signal_file_is_invalid(tmp_path: Path) -> None:
    path = write_record(tmp_path, "trunc", lead_signals())
    dat = path.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:50000])
    with pytest.raises(InvalidRecord) as caught:
        load_ecg_record(path)
    assert caught.value.path == str(dat)  # the file at fault is named


def test_header_disagreeing_with_data_is_invalid(tmp_path: Path) -> None:
    path = write_record(tmp_path, "lie", lead_signals())
    other = write_record(tmp_path, "other", lead_signals(seed=5))
    path.with_suffix(".dat").write_bytes(other.with_suffix(".dat").read_bytes())
    with pytest.raises(InvalidRecord) as caught:
        load_ecg_record(path)
    assert caught.value.kind == "checksum"
    assert caught.value.path == str(path.with_suffix(".hea"))


def test_fill_nan_gaps_matches_pointwise_interpolation() -> None:
    x = np.array([[0.0, np.nan, np.nan, 3.0, 4.0, np.nan]])
    out = fill_nan_gaps(x, fs=500, max_gap_s=0.01, max_nan_fraction=1.0)
    np.testing.assert_allclose(out, [[0.0, 1.0, 2.0, 3.0, 4.0, 4.0]])


def test_minmax_normalisation_is_the_papers() -> None:
    x = lead_signals().T.astype(np.float32)
    out = normalise_ecg(x, "minmax")
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)
    slow = 2 * (x - x.min()) / (x.max() - x.min()) - 1  # one min and max over all leads
    np.testing.assert_allclose(out, slow, atol=1e-6)


def test_standardise_removes_baseline_per_lead() -> None:
    x = lead_signals().T + np.linspace(0, 3, 5000)[None]  # slow drift on every lead
    out = normalise_ecg(x, "standardise")
    np.testing.assert_allclose(out.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=1), 1, atol=1e-3)
    first, last = out[:, :500].mean(), out[:, -500:].mean()
    assert abs(first - last) < 0.2  # the drift is gone


def test_unknown_normalisation_rejected() -> None:
    with pytest.raises(ValueError, match="minmax"):
        normalise_ecg(np.zeros((12, 5000)), "robust")


# ---------------------------------------------------------------- fast path against wfdb


def assert_fast_equals_wfdb(base: Path) -> None:
    fast = _read_format16(base, verify_checksums=True)
    assert fast is not None, "the format-16 fast path should take this record"
    slow = _read_with_wfdb(base, verify_checksums=True)
    assert fast.sig_name == slow.sig_name and fast.units == slow.units and fast.fs == slow.fs
    np.testing.assert_array_equal(np.isnan(fast.physical), np.isnan(slow.physical))
    np.testing.assert_allclose(fast.physical, slow.physical, rtol=0, atol=1e-12, equal_nan=True)
    assert fast.signal_file == slow.signal_file


def test_fast_path_equals_wfdb_on_real_dat(shared_data: Path) -> None:
    for record in ("cinc2021_dat/HR06000", "cinc2021_dat/JS20000"):  # gain 1000, lowercase mv
        assert_fast_equals_wfdb(shared_data / ECG / record)


def test_fast_path_equals_wfdb_on_generated(tmp_path: Path) -> None:
    canonical = lead_signals()
    canonical[100:110, 2] = np.nan  # WFDB invalid samples (-32768) on both paths
    assert_fast_equals_wfdb(write_record(tmp_path, "a", canonical))
    assert_fast_equals_wfdb(write_record(tmp_path, "b", lead_signals(fs=250), fs=250))


def test_fast_path_leaves_other_formats_to_wfdb(shared_data: Path) -> None:
    assert _read_format16(shared_data / ECG / "cinc2021/HR06000", True) is None  # .mat, 16x1+24


def test_header_rewritten_to_eight_signals_is_invalid(tmp_path: Path) -> None:
    """A header that declares 8 x 7500 over a 12 x 5000 .dat (same byte count): refused from
    the header, since 8 signals cannot hold the 12 leads."""
    path = write_record(tmp_path, "eight", lead_signals())
    header = path.with_suffix(".hea")
    lines = header.read_text().splitlines()
    fields = lines[0].split()
    fields[1], fields[3] = "8", "7500"
    header.write_text("\n".join([" ".join(fields), *lines[1:9]]) + "\n")
    with pytest.raises(InvalidRecord) as caught:
        load_ecg_record(path)
    assert caught.value.kind == "missing_leads" and caught.value.path == str(header)


def test_header_rewritten_to_sixteen_signals_fails_its_checksums(tmp_path: Path) -> None:
    """A header that declares 16 x 3750 over a 12 x 5000 .dat (same byte count)."""
    path = write_record(tmp_path, "sixteen", lead_signals())
    header = path.with_suffix(".hea")
    lines = header.read_text().splitlines()
    fields = lines[0].split()
    fields[1], fields[3] = "16", "3750"
    header.write_text("\n".join([" ".join(fields), *lines[1:13], *lines[1:5]]) + "\n")
    with pytest.raises(InvalidRecord) as caught:
        load_ecg_record(path)
    assert caught.value.kind == "checksum" and caught.value.path == str(header)


def test_multi_segment_header_is_refused(tmp_path: Path) -> None:
    # A real record as its one segment, behind a multi-segment master header.
    write_record(tmp_path, "seg1", lead_signals())
    master = tmp_path / "multi.hea"
    master.write_text("multi/1 12 500 5000\nseg1 5000\n")
    with pytest.raises(InvalidRecord) as caught:
        load_ecg_record(tmp_path / "multi")
    assert caught.value.kind == "bad_header"
    assert "multi-segment records are not supported" in caught.value.reason
