"""Physiologically shaped 12-lead ECGs drawn from an admission's state.

The heart is a moving dipole: each wave of each beat (P, septal Q, R, S, T, U, pacing
spike) is a Gaussian in time along a 3-D direction (x: patient's left, y: feet,
z: anterior). The 12 leads are projections of that vectorcardiogram, with the limb leads
built from I and II as Einthoven and Goldberger define them: as an electrocardiograph
does, III, aVR, aVL and aVF are computed from the recorded (noisy) I and II, so III = II - I
and aVR + aVL + aVF = 0 hold up to rounding to ADC units. Rate, rhythm (sinus, atrial fibrillation,
paced), axis, LVH voltage and strain, ST elevation of infarction and the T/U changes of
potassium follow the state; baseline wander, mains hum and white noise follow the recording.

Marker bits (see state.py) are shown as: bit 0 T-wave inversion in V1-V3, bit 1 wide QRS,
bit 2 terminal R' in V1 (RSR'), bit 3 long PR (first-degree AV block).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from preprocessing.layout import ECG_SAMPLES, ECG_SAMPLING_HZ, MIMIC_ECG_LEADS
from preprocessing.synth.state import AdmissionState, PatientTraits

ECG_GAIN_PER_MV = 200.0  # MIMIC-IV-ECG headers: 200.0(0)/mV


def _lead_matrix() -> np.ndarray:
    """[12, 3] projection of the heart vector onto each lead, in MIMIC's lead order."""
    lead_i = np.array([1.0, 0.0, 0.0])
    lead_ii = np.array([0.5, np.sqrt(3) / 2, 0.0])
    lead_iii = lead_ii - lead_i
    limb = {
        "I": lead_i,
        "II": lead_ii,
        "III": lead_iii,
        "aVR": -(lead_i + lead_ii) / 2,
        "aVL": (lead_i - lead_iii) / 2,
        "aVF": (lead_ii + lead_iii) / 2,
    }
    # Precordial electrodes sit in the horizontal plane, from right-anterior (V1) to the
    # left mid-axillary line (V6); they see larger voltages than the limb leads.
    angles = {"V1": 120, "V2": 100, "V3": 78, "V4": 58, "V5": 30, "V6": 5}
    rows = []
    for name in MIMIC_ECG_LEADS:
        if name in limb:
            rows.append(limb[name])
        else:
            phi = np.deg2rad(angles[name])
            rows.append(1.4 * np.array([np.cos(phi), 0.15, np.sin(phi)]))
    return np.stack(rows)


LEAD_MATRIX = _lead_matrix()


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _beat_times(rng: np.random.Generator, rate: float, irregular: bool, duration: float):
    """QRS centre times (s) covering [0, duration] with margin, and each beat's RR (s)."""
    mean_rr = 60.0 / rate
    times, rrs = [], []
    t = -rng.uniform(0, mean_rr)
    while t < duration + mean_rr:
        if irregular:  # atrial fibrillation: irregularly irregular
            rr = mean_rr * float(np.clip(rng.normal(1.0, 0.2), 0.55, 1.7))
        else:
            rr = mean_rr * float(1.0 + rng.normal(0, 0.02))
        times.append(t)
        rrs.append(rr)
        t += rr
    return np.array(times), np.array(rrs)


@dataclass(frozen=True)
class BeatParameters:
    """What one generated ECG's beats are made of: the hidden truth a cart measures.

    Times are seconds relative to each QRS centre (the Gaussians of synthesize_ecg: a
    wave spans its centre +- 2.5 widths); axes in degrees, frontal plane.
    """

    heart_rate: float  # beats per minute
    irregular: bool  # atrial fibrillation: no P wave, irregular RR
    paced: bool
    p_onset: float | None  # None: no P wave (atrial fibrillation, paced)
    p_end: float | None
    qrs_onset: float
    qrs_end: float
    t_end: float
    qrs_axis_deg: float
    t_axis_deg: float
    t_inversion_v1_v3: bool
    rsr_prime_v1: bool
    lvh_voltage: bool
    lateral_strain: bool
    st_elevation: str  # "" | "inferior" | "anterior"
    peaked_t: bool
    flat_t_u_wave: bool
    baseline_wander_mv: float  # largest per-lead wander amplitude
    noise_mv: float  # white-noise standard deviation


def synthesize_ecg(
    rng: np.random.Generator, patient: PatientTraits, state: AdmissionState
) -> np.ndarray:
    """One 10 s ECG: float32 [5000, 12] in mV, leads in MIMIC order (aVF before aVL)."""
    return synthesize_ecg_with_beats(rng, patient, state)[0]


def _wave_span(centre: float, width: float) -> tuple[float, float]:
    return centre - 2.5 * width, centre + 2.5 * width


def synthesize_ecg_with_beats(
    rng: np.random.Generator, patient: PatientTraits, state: AdmissionState
) -> tuple[np.ndarray, BeatParameters]:
    """synthesize_ecg's signal and the parameters its beats were drawn with (same draws)."""
    duration = ECG_SAMPLES / ECG_SAMPLING_HZ
    t = np.arange(ECG_SAMPLES) / ECG_SAMPLING_HZ
    e0, e1, e2, e3 = state.ecg_bits
    centres, widths, amps, vectors = [], [], [], []

    def wave(c: np.ndarray, width: float, amp: float, vec: np.ndarray) -> None:
        centres.append(c)
        widths.append(np.full(len(c), width))
        amps.append(np.full(len(c), amp))
        vectors.append(np.repeat(vec[None, :], len(c), axis=0))

    qrs_times, _ = _beat_times(rng, state.heart_rate, state.atrial_fibrillation, duration)
    axis = np.deg2rad(patient.qrs_axis_deg + rng.normal(0, 4))
    r_vec = _unit((np.cos(axis), np.sin(axis), -0.35))
    qrs_scale = 1.55 if e1 else 1.0
    lvh = 2.0 if patient.hypertension_lvh else 1.0
    qt = 0.41 * np.sqrt(60.0 / state.heart_rate)  # Bazett, QTc about 410 ms

    strain = False
    p_span: tuple[float, float] | None = None
    if state.paced:
        # Ventricular pacing: spike, then a wide LBBB-like complex with discordant T.
        wave(qrs_times - 0.05, 0.002, 2.5, _unit((0.2, 0.9, -0.3)))
        wave(qrs_times, 0.03, 1.3, _unit((0.8, -0.3, -0.55)))
        wave(qrs_times + qt * 0.75, 0.06, 0.45, _unit((-0.7, 0.3, 0.6)))
        qrs_span = _wave_span(0.0, 0.03)
        t_end = _wave_span(qt * 0.75, 0.06)[1]
        qrs_axis_deg = float(np.degrees(np.arctan2(-0.3, 0.8)))
        t_axis_deg = float(np.degrees(np.arctan2(0.3, -0.7)))
    else:
        if not state.atrial_fibrillation:
            pr = 0.25 if e3 else 0.145
            wave(qrs_times - pr, 0.022, 0.14, _unit((0.45, 0.85, 0.25)))
            p_span = _wave_span(-pr, 0.022)
        wave(qrs_times - 0.022 * qrs_scale, 0.008 * qrs_scale, 0.15, _unit((-0.6, 0.1, 0.8)))
        wave(qrs_times, 0.012 * qrs_scale, 1.1 * lvh, r_vec)
        wave(
            qrs_times + 0.022 * qrs_scale, 0.010 * qrs_scale, 0.45 * lvh, _unit((-0.2, -0.2, -0.9))
        )
        if e2:  # terminal rightward-anterior force: RSR' in V1
            wave(qrs_times + 0.045 * qrs_scale, 0.011, 0.55, _unit((-0.35, 0.0, 0.9)))
        t_amp, t_width = 0.32, 0.045
        if state.potassium > 5.5:  # hyperkalaemia: tall narrow T
            t_amp, t_width = 0.32 + 0.35 * (state.potassium - 5.5), 0.03
        elif state.potassium < 3.4:  # hypokalaemia: flat T with a U wave
            t_amp = 0.12
            wave(qrs_times + qt + 0.08, 0.035, 0.12, _unit((0.5, 0.5, 0.7)))
        t_vec = np.array(
            [0.7 * np.cos(axis) + 0.3, 0.7 * np.sin(axis) + 0.2, 0.55 if not e0 else -0.9]
        )
        if patient.hypertension_lvh and rng.random() < 0.5:  # strain: lateral T inversion
            t_vec[0] -= 1.2
            strain = True
        wave(qrs_times + qt * 0.72, t_width, t_amp, _unit(tuple(t_vec)))
        qrs_end = _wave_span(0.022 * qrs_scale, 0.010 * qrs_scale)[1]
        if e2:
            qrs_end = max(qrs_end, _wave_span(0.045 * qrs_scale, 0.011)[1])
        qrs_span = (_wave_span(-0.022 * qrs_scale, 0.008 * qrs_scale)[0], qrs_end)
        t_end = _wave_span(qt * 0.72, t_width)[1]
        qrs_axis_deg = float(np.rad2deg(axis))
        t_axis_deg = float(np.degrees(np.arctan2(t_vec[1], t_vec[0])))
        if state.myocardial_infarction:  # ST elevation towards the injured territory
            st_vec = _unit(
                (0.0, 1.0, 0.1) if state.mi_territory == "inferior" else (0.1, -0.2, 1.0)
            )
            wave(qrs_times + qt * 0.4, 0.06, 0.25, st_vec)

    c = np.concatenate(centres)
    w = np.concatenate(widths)
    a = np.concatenate(amps)
    v = np.concatenate(vectors)
    keep = (c > -0.5) & (c < duration + 0.5)
    c, w, a, v = c[keep], w[keep], a[keep], v[keep]
    # Each wave only matters within 5 sigma of its centre: add it on that slice only.
    vcg = np.zeros((len(t), 3))
    lo = np.clip(np.floor((c - 5 * w) * ECG_SAMPLING_HZ), 0, len(t)).astype(int)
    hi = np.clip(np.ceil((c + 5 * w) * ECG_SAMPLING_HZ) + 1, 0, len(t)).astype(int)
    for j in range(len(c)):
        if hi[j] > lo[j]:
            seg = t[lo[j] : hi[j]]
            g = a[j] * np.exp(-0.5 * ((seg - c[j]) / w[j]) ** 2)
            vcg[lo[j] : hi[j]] += g[:, None] * v[j][None, :]

    if state.atrial_fibrillation:  # fibrillatory waves, best seen in V1 and II
        f = sum(
            rng.uniform(0.02, 0.05) * np.sin(2 * np.pi * rng.uniform(4, 8) * t + rng.uniform(0, 6))
            for _ in range(3)
        )
        vcg += np.outer(f, _unit((0.1, 0.5, 0.85)))

    leads = vcg @ LEAD_MATRIX.T * patient.lead_gain[None, :]
    noise, wander_mv, noise_mv = _recording_noise(rng, t)
    leads += noise
    beats = BeatParameters(
        heart_rate=float(state.heart_rate),
        irregular=bool(state.atrial_fibrillation),
        paced=bool(state.paced),
        p_onset=None if p_span is None else float(p_span[0]),
        p_end=None if p_span is None else float(p_span[1]),
        qrs_onset=float(qrs_span[0]),
        qrs_end=float(qrs_span[1]),
        t_end=float(t_end),
        qrs_axis_deg=qrs_axis_deg,
        t_axis_deg=t_axis_deg,
        t_inversion_v1_v3=bool(e0) and not state.paced,
        rsr_prime_v1=bool(e2) and not state.paced,
        lvh_voltage=bool(patient.hypertension_lvh) and not state.paced,
        lateral_strain=strain,
        st_elevation=state.mi_territory if state.myocardial_infarction and not state.paced else "",
        peaked_t=state.potassium > 5.5 and not state.paced,
        flat_t_u_wave=state.potassium < 3.4 and not state.paced,
        baseline_wander_mv=wander_mv,
        noise_mv=noise_mv,
    )
    return _derive_limb_leads(leads).astype(np.float32), beats


def _derive_limb_leads(leads: np.ndarray) -> np.ndarray:
    """Recompute III, aVR, aVL, aVF from the recorded I and II, as electrocardiographs do."""
    idx = {name: k for k, name in enumerate(MIMIC_ECG_LEADS)}
    i, ii = leads[:, idx["I"]], leads[:, idx["II"]]
    leads[:, idx["III"]] = ii - i
    leads[:, idx["aVR"]] = -(i + ii) / 2
    leads[:, idx["aVL"]] = i - ii / 2
    leads[:, idx["aVF"]] = ii - i / 2
    return leads


def _recording_noise(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, float, float]:
    """[samples, 12] mV of baseline wander, mains hum and white noise; largest wander
    amplitude (mV) and the white noise's standard deviation (mV)."""
    n_leads = len(MIMIC_ECG_LEADS)
    wander_amp = rng.uniform(0.0, 0.25) * rng.uniform(0.3, 1.0, size=n_leads)
    wander_hz = rng.uniform(0.05, 0.5, size=(2, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(2, n_leads))
    # sin(wt + phase) = sin(wt) cos(phase) + cos(wt) sin(phase): two outer products per
    # component instead of a sine per lead.
    wander = np.zeros((len(t), n_leads))
    for hz, ph, scale in zip(wander_hz[:, 0], phase, (1.0, 0.5), strict=True):
        wt = 2 * np.pi * hz * t
        wander += scale * (np.outer(np.sin(wt), np.cos(ph)) + np.outer(np.cos(wt), np.sin(ph)))
    wander *= wander_amp
    hum = rng.uniform(0, 0.02) * np.sin(2 * np.pi * 60.0 * t + rng.uniform(0, 6))[:, None]
    sigma = rng.uniform(0.005, 0.025)
    white = rng.standard_normal((len(t), n_leads), dtype=np.float32) * np.float32(sigma)
    return wander + hum + white, float(wander_amp.max()), float(sigma)


def to_digital(signal_mv: np.ndarray) -> np.ndarray:
    """mV float [samples, leads] -> int16 ADC units at 200/mV (-32768 is WFDB's NaN: avoided)."""
    return np.clip(np.round(signal_mv * ECG_GAIN_PER_MV), -32767, 32767).astype(np.int16)
