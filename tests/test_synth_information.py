"""--joint-fraction: a joint-only CXR finding is invisible to ECG alone and to labs alone.

Simple classifiers on features drawn from the generated signals: ECG features are a
median-beat template per lead (from detected beats, binned) reduced by PCA; lab features
are the paper's 50 labs (signed log, standardised) reduced by PCA; the joint classifier
adds the products of ECG and lab components, so a linear model can express an XOR.
The model is logistic regression fitted by Newton's method, evaluated on held-out rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import uniform_filter1d
from scipy.signal import find_peaks

from preprocessing.lab_catalog import PAPER_LAB_ITEMIDS
from preprocessing.synth.ecg_waveform import synthesize_ecg
from preprocessing.synth.labs_generator import lab_values
from preprocessing.synth.state import joint_marker_count, sample_admission, sample_patient


def ecg_features(signal: np.ndarray) -> np.ndarray:
    """[5000, 12] mV -> [240] median-beat template (20 bins of 40 ms x 12 leads)."""
    x = signal - uniform_filter1d(signal, size=300, axis=0, mode="nearest")  # drop wander
    speed = np.sqrt((np.diff(uniform_filter1d(x, 9, axis=0), axis=0) ** 2).sum(axis=1))
    peaks, _ = find_peaks(speed, distance=120, height=0.4 * np.percentile(speed, 99.5))
    peaks = peaks[(peaks >= 150) & (peaks < len(x) - 250)]
    template = np.median(np.stack([x[p - 150 : p + 250] for p in peaks]), axis=0)
    return template.reshape(20, 20, 12).mean(axis=1).ravel()


def lab_features(values: dict[int, float]) -> np.ndarray:
    """The paper's 50 labs on a signed log scale."""
    a = np.array([values[i] for i in PAPER_LAB_ITEMIDS])
    return np.sign(a) * np.log1p(np.abs(a))


def draw(n: int, joint_markers: int, seed: int):
    """n admissions: ECG features, lab features, and the CXR marker-0 finding."""
    rng = np.random.default_rng(seed)
    ecg, labs, finding = [], [], []
    for _ in range(n):
        patient = sample_patient(rng)
        state = sample_admission(rng, patient, joint_markers)
        ecg.append(ecg_features(synthesize_ecg(rng, patient, state)))
        labs.append(lab_features(lab_values(rng, patient, state)))
        finding.append(state.cxr_bits[0])
    return np.array(ecg), np.array(labs), np.array(finding)


def pca(train: np.ndarray, test: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Project onto the first k principal components of the (standardised) training rows."""
    mu, sd = train.mean(axis=0), train.std(axis=0) + 1e-9
    a, b = (train - mu) / sd, (test - mu) / sd
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    scale = np.sqrt(len(a)) / s[:k]
    return a @ vt[:k].T * scale, b @ vt[:k].T * scale


def logistic_accuracy(x_train, y_train, x_test, y_test, l2: float = 1e-2) -> float:
    """Held-out accuracy of L2-regularised logistic regression (Newton's method)."""
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-9
    xt = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    xv = np.c_[(x_test - mu) / sd, np.ones(len(x_test))]
    w = np.zeros(xt.shape[1])
    for _ in range(30):
        p = 1 / (1 + np.exp(-xt @ w))
        grad = xt.T @ (p - y_train) / len(xt) + l2 * w
        hess = (xt.T * (p * (1 - p))) @ xt / len(xt) + l2 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return float(((xv @ w > 0) == y_test).mean())


def with_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[a, b, a_i * b_j]: features in which XOR of two linear readouts is linear."""
    return np.c_[a, b, (a[:, :, None] * b[:, None, :]).reshape(len(a), -1)]


def accuracies(joint_markers: int, n: int, seed: int, k: int = 14) -> dict[str, float]:
    ecg, labs, y = draw(n, joint_markers, seed)
    cut = int(n * 0.65)
    e_tr, e_te = pca(ecg[:cut], ecg[cut:], k)
    l_tr, l_te = pca(labs[:cut], labs[cut:], k)
    return {
        "ecg": logistic_accuracy(e_tr, y[:cut], e_te, y[cut:]),
        "labs": logistic_accuracy(l_tr, y[:cut], l_te, y[cut:]),
        "both": logistic_accuracy(
            with_products(e_tr, l_tr), y[:cut], with_products(e_te, l_te), y[cut:]
        ),
        "test_rows": n - cut,
    }


def test_joint_fraction_rounds_to_marker_counts() -> None:
    assert [joint_marker_count(f) for f in (0, 0.2, 0.5, 0.75, 1)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        joint_marker_count(1.5)


@pytest.mark.slow
def test_joint_only_finding_needs_ecg_and_labs_together() -> None:
    acc = accuracies(joint_markers=4, n=600, seed=1)
    # 210 held-out rows: chance is 0.5 with a standard error of about 0.035.
    assert acc["ecg"] < 0.62, acc
    assert acc["labs"] < 0.62, acc
    assert acc["both"] > 0.8, acc


@pytest.mark.slow
def test_pairwise_finding_is_visible_to_each_modality_alone() -> None:
    acc = accuracies(joint_markers=0, n=300, seed=2)
    assert acc["ecg"] > 0.85, acc
    assert acc["labs"] > 0.85, acc
