"""Lab values into percentiles: empirical CDFs fitted on the training split only.

A lab's CDF is stored as ``cdf_values``: its sorted training values, or, for more than
``MAX_CDF_POINTS`` values, that many evenly spaced quantiles of them. Either way a value's
percentile is its mid-rank among those points,

    p(v) = (#{c < v} + #{c <= v}) / (2 * len(c))   in [0, 1],

so that tied values (labs are reported at fixed precision) share the middle of their mass
and the training percentiles average 0.5. An imported Symile-MIMIC release records the
reference's rule instead, ``percentile_rule = "ecdf_right"``: p(v) = #{c <= v} / len(c).
Each rule sits here beside its inverse (`PERCENTILE_RULES`), which reads an approximate value
back from a stored percentile (the app's "≈ value"); a spec's ``percentile_rule`` (default
"mid_rank") chooses the pair. A missing lab is filled with the training mean percentile
(``fill_percentile``) and flagged 0 in ``observed`` (1 = observed, everywhere).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MAX_CDF_POINTS = 1001


def cdf_points(train_values: np.ndarray, max_points: int = MAX_CDF_POINTS) -> np.ndarray:
    """Sorted finite training values of one lab, or `max_points` quantiles of them; float64."""
    values = np.sort(np.asarray(train_values, dtype=np.float64))
    values = values[np.isfinite(values)]
    if values.size <= max_points:
        return values
    # Quantiles at the mid-points of max_points equal-mass bins keep the mid-rank formula
    # consistent with the full sorted values.
    probabilities = (np.arange(max_points) + 0.5) / max_points
    return np.quantile(values, probabilities, method="inverted_cdf")


def mid_rank_percentile(values: np.ndarray, cdf_values: np.ndarray) -> np.ndarray:
    """Mid-rank empirical CDF of `values` against sorted `cdf_values`; float64 in [0, 1]."""
    cdf = np.asarray(cdf_values, dtype=np.float64)
    if cdf.size == 0:
        return np.full(np.shape(values), np.nan)
    below = np.searchsorted(cdf, values, side="left")
    at_or_below = np.searchsorted(cdf, values, side="right")
    return (below + at_or_below) / (2.0 * cdf.size)


def ecdf_right_percentile(values: np.ndarray, cdf_values: np.ndarray) -> np.ndarray:
    """Right-continuous empirical CDF, #{c <= v} / len(c), of `values` against sorted
    `cdf_values` (the Symile-MIMIC reference's rule); float64 in [0, 1]."""
    cdf = np.asarray(cdf_values, dtype=np.float64)
    if cdf.size == 0:
        return np.full(np.shape(values), np.nan)
    return np.searchsorted(cdf, values, side="right") / cdf.size


def _read_back(percentiles: np.ndarray, cdf_values: np.ndarray, offset: float) -> np.ndarray:
    """Values at percentiles, interpolated between the CDF points, point i sitting at
    percentile (i + offset) / n; float64, NaN for an empty CDF."""
    cdf = np.asarray(cdf_values, dtype=np.float64)
    if cdf.size == 0:
        return np.full(np.shape(percentiles), np.nan)
    grid = (np.arange(cdf.size) + offset) / cdf.size
    return np.interp(percentiles, grid, cdf)


def mid_rank_value(percentiles: np.ndarray, cdf_values: np.ndarray) -> np.ndarray:
    """Inverse of `mid_rank_percentile`: a stored value's mid-rank is (i + 0.5) / n (ties
    share the middle of their run), so a stored value reads back exactly and a value between
    two stored ones reads back between them."""
    return _read_back(percentiles, cdf_values, 0.5)


def ecdf_right_value(percentiles: np.ndarray, cdf_values: np.ndarray) -> np.ndarray:
    """Inverse of `ecdf_right_percentile`: stored value i sits at (i + 1) / n (the last of a
    run of ties), so a stored value reads back exactly and one between two stored ones reads
    back between them."""
    return _read_back(percentiles, cdf_values, 1.0)


PercentileFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PercentileRule:
    """A percentile rule and its inverse, both (array, sorted cdf_values) -> float64 array."""

    percentile: PercentileFn  # raw values -> percentiles in [0, 1]
    value: PercentileFn  # percentiles -> approximate raw values


PERCENTILE_RULES = {
    "mid_rank": PercentileRule(mid_rank_percentile, mid_rank_value),
    "ecdf_right": PercentileRule(ecdf_right_percentile, ecdf_right_value),
}


def percentile_rule(spec: Mapping) -> PercentileRule:
    """The rule a lab's spec (an entry of dataset.json's ``labs``) records; mid_rank when it
    records none (datasets this project preprocessed)."""
    name = spec.get("percentile_rule", "mid_rank")
    if name not in PERCENTILE_RULES:
        raise ValueError(
            f"lab {spec.get('itemid')}: unknown percentile_rule {name!r}, "
            f"expected one of {sorted(PERCENTILE_RULES)}"
        )
    return PERCENTILE_RULES[name]


def approximate_value(percentile: float, spec: Mapping) -> float:
    """The raw value a stored percentile stands for, read back through the inverse of the
    lab's own percentile rule; NaN for a lab with no training values."""
    return float(percentile_rule(spec).value(np.float64(percentile), spec["cdf_values"]))


def fit_lab_percentiles(
    train_values: np.ndarray,
    train_observed: np.ndarray,
    itemids: Sequence[int],
    descriptions: Mapping[int, Mapping[str, str]],
    max_points: int = MAX_CDF_POINTS,
) -> list[dict]:
    """Fit one CDF per lab column on the training rows: the ``labs`` list of dataset.json.

    train_values float [N, L] raw values (any where not observed), train_observed [N, L]
    1 = observed; descriptions maps itemid to its label, fluid and unit.
    """
    specs = []
    for column, itemid in enumerate(itemids):
        seen = np.asarray(train_observed[:, column], dtype=bool)
        raw = np.asarray(train_values[seen, column], dtype=np.float64)
        raw = raw[np.isfinite(raw)]
        cdf = cdf_points(raw, max_points)
        # Mean training percentile; 0.5 (the median) for a lab never seen in training.
        fill = float(mid_rank_percentile(raw, cdf).mean()) if raw.size else 0.5
        info = descriptions.get(int(itemid), {})
        specs.append(
            {
                "itemid": int(itemid),
                "label": str(info.get("label", "")),
                "fluid": str(info.get("fluid", "")),
                "unit": str(info.get("unit", "")),
                "n_train_observed": int(raw.size),
                "cdf_values": [float(v) for v in cdf],
                "fill_percentile": fill,
            }
        )
    return specs


def observed_mask(values: np.ndarray, labs_spec: Sequence[Mapping]) -> np.ndarray:
    """bool [N, L] (or [L]): 1 = observed, a finite value of a lab that training has seen.

    A lab with no training values has no CDF: its value carries no information the model
    was trained on, so it is marked missing, exactly as if it had not been measured.
    """
    raw = np.asarray(values, dtype=np.float64)
    fitted = np.array([len(spec["cdf_values"]) > 0 for spec in labs_spec], dtype=bool)
    return np.isfinite(raw) & fitted


def percentiles_from_cdf(
    values: np.ndarray, observed: np.ndarray, labs_spec: Sequence[Mapping]
) -> np.ndarray:
    """Raw lab values float [N, L] (or [L]) into train-fitted percentiles float32 in [0, 1].

    `labs_spec` is dataset.json's ``labs`` list (its order is the column order); each lab's
    ``percentile_rule`` applies. Where `observed` is 0 or the value is not finite the lab's
    ``fill_percentile`` is used.
    This is the one place raw values become percentiles (the app uses it for uploads).
    """
    raw = np.asarray(values, dtype=np.float64)
    single = raw.ndim == 1
    raw = np.atleast_2d(raw)
    seen = np.atleast_2d(np.asarray(observed).astype(bool)) & np.isfinite(raw)
    if raw.shape[1] != len(labs_spec) or seen.shape != raw.shape:
        raise ValueError(
            f"values {raw.shape} and observed {seen.shape} must have {len(labs_spec)} columns"
        )
    out = np.empty(raw.shape, dtype=np.float32)
    for column, spec in enumerate(labs_spec):
        filled = np.full(raw.shape[0], float(spec["fill_percentile"]))
        mask = seen[:, column]
        if not len(spec["cdf_values"]):  # a lab never seen in training carries no information
            mask = np.zeros_like(mask)
        rule = percentile_rule(spec)
        filled[mask] = rule.percentile(raw[mask, column], np.asarray(spec["cdf_values"]))
        out[:, column] = filled
    return out[0] if single else out


def choose_top_k_labs(
    itemids: Sequence[int], observed_train: np.ndarray, k: int
) -> tuple[list[int], list[int]]:
    """The K labs most often observed in training (ties: lower itemid): itemids, columns.

    observed_train: [N_train, L] (1 = observed), columns in the order of `itemids`.
    """
    counts = observed_train.sum(axis=0)
    order = sorted(range(len(itemids)), key=lambda c: (-counts[c], itemids[c]))
    columns = sorted(order[:k], key=lambda c: itemids[c])
    return [int(itemids[c]) for c in columns], columns
