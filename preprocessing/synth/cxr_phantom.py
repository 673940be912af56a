"""A chest radiograph phantom whose content follows the admission's state.

Drawn in attenuation terms (1 = dense, bright in MONOCHROME2 sense): soft tissue, two lung
fields with diaphragm domes, ribs and clavicles, spine and mediastinum, the cardiac
silhouette with its cardiothoracic ratio, pleural effusions (blunted angles with a
meniscus), perihilar oedema, lobar consolidation and a pacemaker with its lead. Frontal
views (PA, AP: magnified heart, scapulae over the lungs) and lateral views.

Marker bits (see state.py) are shown as round nodular opacities, one fixed lung zone per
marker, present when the bit is 1.

The scene is drawn at up to ``RENDER_SIZE`` pixels and resized to the requested matrix,
so that 3k x 3k images cost little more than small ones.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from preprocessing.synth.state import N_MARKERS, AdmissionState, PatientTraits

RENDER_SIZE = 256
# Marker nodule centres (u: image x in [-1, 1], patient's right on the left; v: down).
MARKER_ZONES_FRONTAL = ((-0.42, -0.42), (0.42, -0.42), (-0.52, 0.12), (0.58, 0.05))
MARKER_ZONES_LATERAL = ((0.05, -0.45), (-0.2, -0.3), (0.25, -0.05), (-0.05, 0.1))
_ZONE_CENTRES = {
    "RUL": (-0.4, -0.35),
    "RML": (-0.3, 0.12),
    "RLL": (-0.42, 0.32),
    "LUL": (0.4, -0.3),
    "LLL": (0.45, 0.32),
}
assert len(MARKER_ZONES_FRONTAL) == N_MARKERS == len(MARKER_ZONES_LATERAL)


def _smooth_inside(d: np.ndarray, softness: float) -> np.ndarray:
    """1 inside (d < 1), 0 outside, with a linear edge `4 * softness` wide (cheaper than exp)."""
    return np.clip(0.5 - (d - 1.0) / (4.0 * softness), 0.0, 1.0)


def _below(v: np.ndarray, level, softness: float) -> np.ndarray:
    """1 where v > level (lower in the image), 0 above, with a linear edge."""
    return np.clip(0.5 + (v - level) / (4.0 * softness), 0.0, 1.0)


def _ellipse(u, v, cu, cv, au, av) -> np.ndarray:
    return np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)


def _add_blob(img, u, v, centre, radii, amp: float, softness: float) -> None:
    """img += amp inside an ellipse, computed only on its bounding box (small shapes)."""
    (cu, cv), (au, av) = centre, radii
    reach_u, reach_v = au * (1 + 2 * softness), av * (1 + 2 * softness)
    cols = np.searchsorted(u[0], [cu - reach_u, cu + reach_u])
    rows = np.searchsorted(v[:, 0], [cv - reach_v, cv + reach_v])
    box = (slice(rows[0], rows[1]), slice(cols[0], cols[1]))
    img[box] += amp * _smooth_inside(_ellipse(u[box], v[box], cu, cv, au, av), softness)


def _frontal(u, v, rng, patient: PatientTraits, state: AdmissionState, view: str) -> np.ndarray:
    half = patient.thorax_width  # half-width of the thorax in u units
    img = 0.05 + 0.42 * patient.body_habitus * _smooth_inside(
        _ellipse(u, v, 0, 0.15, 0.97, 1.2), 0.03
    )
    # Lungs, cut by the diaphragm domes (right dome higher).
    lung_au, lung_av = half * 0.42, 0.58
    lungs = np.zeros_like(u)
    per_side = {}
    for side, cu in (("R", -half * 0.55), ("L", half * 0.55)):
        dome_top = 0.38 if side == "R" else 0.44
        dome = dome_top + 0.25 * ((u - cu) / lung_au) ** 2
        m = _smooth_inside(_ellipse(u, v, cu, -0.05, lung_au, lung_av), 0.04)
        m *= 1.0 - _below(v, dome, 0.015)
        per_side[side] = (m, cu, dome)
        lungs = np.maximum(lungs, m)
    img -= 0.28 * lungs
    # Ribs: curved stripes across the lung fields; clavicles at the top.
    ribs = np.clip(np.sin(2 * np.pi * (v + 0.18 * u**2) * 5.5), 0, 1) ** 3
    img += 0.07 * ribs * lungs
    for sgn in (-1, 1):
        clav = np.abs(v - (-0.62 + 0.18 * np.abs(u) - (0.05 if view == "AP" else 0)))
        img += 0.12 * (clav < 0.025) * (np.abs(u) < half * 0.8) * (sgn * u > 0)
    # Mediastinum and spine.
    img += 0.2 * _smooth_inside(np.abs(u) / 0.1, 0.05) * (v > -0.8)
    # Heart: width = CTR x thorax width (AP magnifies it).
    ctr = state.cardiothoracic_ratio * (1.12 if view == "AP" else 1.0)
    heart_w = ctr * 2 * half
    heart = _smooth_inside(
        _ellipse(u, v, patient.heart_offset + heart_w * 0.08, 0.22, heart_w / 2, 0.26), 0.03
    )
    img += 0.3 * heart
    # Oedema: perihilar haze in both lungs.
    if state.oedema > 0.05:
        hila = np.exp(-(((np.abs(u) - half * 0.25) / 0.3) ** 2 + ((v - 0.0) / 0.35) ** 2))
        img += 0.22 * state.oedema * hila * lungs
    # Effusions: fluid fills the lung base, higher laterally (meniscus).
    for side, severity in (("R", state.effusion_right), ("L", state.effusion_left)):
        if severity <= 0:
            continue
        m, cu, dome = per_side[side]
        level = 0.42 - 0.55 * severity - 0.12 * severity * np.abs((u - cu) / lung_au)
        img += 0.32 * m * _below(v, level, 0.02)
    # Consolidation: a patchy lobar opacity.
    if state.consolidation > 0:
        cu, cv = _ZONE_CENTRES[state.consolidation_zone]
        cu *= half / 0.7
        patch = np.zeros_like(u)
        for _ in range(5):
            du, dv = rng.normal(0, 0.07, size=2)
            patch += np.exp(-(((u - cu - du) / 0.1) ** 2 + ((v - cv - dv) / 0.09) ** 2))
        img += 0.3 * state.consolidation * np.clip(patch, 0, 1) * lungs
    # Scapulae project over the lateral lung fields on AP films.
    if view == "AP":
        for sgn in (-1, 1):
            _add_blob(img, u, v, (sgn * half * 0.85, -0.35), (0.15, 0.3), 0.06, 0.05)
    for bit, (cu, cv) in zip(state.cxr_bits, MARKER_ZONES_FRONTAL, strict=True):
        if bit:
            _add_blob(img, u, v, (cu * half / 0.7, cv), (0.075, 0.075), 0.32, 0.08)
    if state.paced:
        _draw_pacemaker(img, u, v, (half * 0.75, -0.62), (patient.heart_offset + 0.05, 0.35))
    return img


def _draw_pacemaker(img, u, v, box_centre, lead_tip) -> None:
    """Generator can over the left upper chest and a lead curving into the right ventricle."""
    bu, bv = box_centre
    img += 0.9 * ((np.abs(u - bu) < 0.09) & (np.abs(v - bv) < 0.06))
    s = np.linspace(0, 1, 40)
    control = (0.0, -0.2)
    pu = (1 - s) ** 2 * bu + 2 * (1 - s) * s * control[0] + s**2 * lead_tip[0]
    pv = (1 - s) ** 2 * bv + 2 * (1 - s) * s * control[1] + s**2 * lead_tip[1]
    near = np.zeros(u.shape, dtype=bool)
    for a, b in zip(pu, pv, strict=True):
        near |= ((u - a) ** 2 + (v - b) ** 2) < 0.012**2
    img += 0.7 * near


def _lateral(u, v, rng, patient: PatientTraits, state: AdmissionState) -> np.ndarray:
    # Anterior to the viewer's left; spine at the right (posterior).
    img = 0.05 + 0.45 * patient.body_habitus * _smooth_inside(
        _ellipse(u, v, 0, 0.15, 0.85, 1.2), 0.03
    )
    dome = 0.42 + 0.2 * u**2
    lungs = _smooth_inside(_ellipse(u, v, 0.0, -0.05, 0.6, 0.6), 0.05) * (1 - _below(v, dome, 0.02))
    img -= 0.25 * lungs
    img += 0.3 * _smooth_inside(np.abs(u - 0.68) / 0.1, 0.05)  # vertebral column
    ctr = state.cardiothoracic_ratio
    img += 0.25 * _smooth_inside(_ellipse(u, v, -0.3, 0.22, 0.3 * ctr / 0.45, 0.28), 0.04)
    effusion = max(state.effusion_left, state.effusion_right)
    if effusion > 0:  # posterior costophrenic sulcus fills first
        img += 0.3 * lungs * _below(v + 0.2 * u, 0.45 - 0.4 * effusion, 0.02)
    img += 0.15 * state.oedema * np.exp(-((u / 0.35) ** 2 + (v / 0.35) ** 2)) * lungs
    for bit, (cu, cv) in zip(state.cxr_bits, MARKER_ZONES_LATERAL, strict=True):
        if bit:
            _add_blob(img, u, v, (cu, cv), (0.07, 0.07), 0.28, 0.08)
    if state.paced:
        _draw_pacemaker(img, u, v, (-0.55, -0.6), (-0.35, 0.35))
    return img


def render_chest(
    rng: np.random.Generator,
    patient: PatientTraits,
    state: AdmissionState,
    view: str,
    rows: int,
    columns: int,
) -> np.ndarray:
    """The phantom radiograph: float32 [rows, columns] in [0, 1], 1 = dense (bright)."""
    scale = min(1.0, RENDER_SIZE / max(rows, columns))
    h, w = max(8, round(rows * scale)), max(8, round(columns * scale))
    aspect = columns / rows
    v, u = np.meshgrid(
        np.linspace(-1, 1, h, dtype=np.float32),
        np.linspace(-aspect, aspect, w, dtype=np.float32),
        indexing="ij",
    )
    # Small positioning differences between films.
    u = u + rng.normal(0, 0.02)
    v = v + rng.normal(0, 0.02)
    if view == "LATERAL":
        img = _lateral(u, v, rng, patient, state)
    else:
        img = _frontal(u, v, rng, patient, state, view)
    img = ndimage.gaussian_filter(img.astype(np.float32), sigma=max(0.6, h / 384))
    img = img * (1.0 + 0.08 * v)  # heel effect: exposure varies top to bottom
    if (h, w) != (rows, columns):
        img = ndimage.zoom(img, (rows / h, columns / w), order=1)[:rows, :columns]
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(
        0.012
    )  # quantum noise
    return np.clip(img, 0.0, 1.0).astype(np.float32)
