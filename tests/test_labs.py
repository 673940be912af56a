"""Lab percentiles: the mid-rank empirical CDF against a slow reference, fill and round trip,
and each percentile rule read back by its inverse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from preprocessing.labs import (
    MAX_CDF_POINTS,
    PERCENTILE_RULES,
    approximate_value,
    cdf_points,
    ecdf_right_percentile,
    fit_lab_percentiles,
    mid_rank_percentile,
    observed_mask,
    percentile_rule,
    percentiles_from_cdf,
)


def slow_mid_rank(value: float, train: list[float]) -> float:
    """(#below + #at-or-below) / 2n, counted one training value at a time."""
    below = sum(1 for t in train if t < value)
    at_or_below = sum(1 for t in train if t <= value)
    return (below + at_or_below) / (2 * len(train))


def test_mid_rank_matches_slow_reference() -> None:
    rng = np.random.default_rng(0)
    train = np.round(rng.normal(1.0, 0.3, 300), 1)  # ties, as labs are reported
    queries = np.concatenate([np.round(rng.normal(1.0, 0.5, 50), 2), [-5.0, 9.0]])
    fast = mid_rank_percentile(queries, cdf_points(train))
    slow = [slow_mid_rank(q, train.tolist()) for q in queries]
    np.testing.assert_allclose(fast, slow)
    assert fast.min() == 0.0 and fast.max() == 1.0  # outside the training range


def test_quantile_compression_close_to_exact() -> None:
    rng = np.random.default_rng(1)
    train = rng.lognormal(0.0, 1.0, 50_000)
    points = cdf_points(train)
    assert points.size == MAX_CDF_POINTS
    queries = rng.lognormal(0.0, 1.0, 500)
    exact = mid_rank_percentile(queries, np.sort(train))
    np.testing.assert_allclose(mid_rank_percentile(queries, points), exact, atol=1.5e-3)


def test_fit_and_transform_fill_missing_with_train_mean() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=(200, 3))
    observed = rng.random((200, 3)) > 0.3
    observed[:, 2] = False  # a lab never seen in training
    spec = fit_lab_percentiles(
        values, observed, [50912, 50971, 51221], {50912: {"label": "Creatinine"}}
    )
    assert spec[0]["label"] == "Creatinine" and spec[2]["cdf_values"] == []
    out = percentiles_from_cdf(values, observed, spec)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out[~observed[:, 0], 0], spec[0]["fill_percentile"])
    # Mid-rank percentiles of the training values themselves average exactly one half.
    assert spec[0]["fill_percentile"] == pytest.approx(0.5)
    np.testing.assert_allclose(out[:, 2], 0.5)


def test_spec_survives_json_round_trip() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(100, 2))
    observed = np.ones((100, 2), dtype=bool)
    spec = fit_lab_percentiles(values, observed, [1, 2], {})
    reloaded = json.loads(json.dumps(spec))
    np.testing.assert_array_equal(
        percentiles_from_cdf(values, observed, spec),
        percentiles_from_cdf(values, observed, reloaded),
    )


def test_single_panel_and_nan_treated_as_missing() -> None:
    spec = fit_lab_percentiles(np.array([[1.0], [2.0], [3.0]]), np.ones((3, 1)), [7], {})
    assert percentiles_from_cdf(np.array([2.0]), np.array([1]), spec).shape == (1,)
    out = percentiles_from_cdf(np.array([[np.nan]]), np.array([[1]]), spec)
    assert out[0, 0] == pytest.approx(spec[0]["fill_percentile"])
    with pytest.raises(ValueError):
        percentiles_from_cdf(np.zeros((2, 3)), np.ones((2, 3)), spec)


def test_a_lab_training_never_saw_is_marked_missing_even_when_measured() -> None:
    rng = np.random.default_rng(3)
    train = rng.normal(size=(50, 2))
    train_observed = np.ones((50, 2), dtype=bool)
    train_observed[:, 1] = False
    spec = fit_lab_percentiles(train, train_observed, [50912, 50971], {})
    query = np.array([[1.0, 4.2], [np.nan, 3.9]])
    np.testing.assert_array_equal(observed_mask(query, spec), [[True, False], [False, False]])
    np.testing.assert_array_equal(observed_mask(query[0], spec), [True, False])


def test_ecdf_right_matches_slow_reference() -> None:
    rng = np.random.default_rng(5)
    train = np.sort(np.round(rng.normal(1.0, 0.3, 200), 1))
    queries = np.concatenate([np.round(rng.normal(1.0, 0.5, 50), 2), [-5.0, 9.0]])
    slow = [sum(1 for t in train if t <= q) / len(train) for q in queries]
    np.testing.assert_allclose(ecdf_right_percentile(queries, train), slow)


@pytest.mark.parametrize("rule", sorted(PERCENTILE_RULES))
def test_each_rule_reads_back_through_its_inverse(rule: str) -> None:
    """value -> percentile -> approximate value: exactly a stored value (ties included),
    and between its two neighbouring stored values otherwise (within one CDF step)."""
    rng = np.random.default_rng(6)
    train = np.round(rng.lognormal(0.0, 0.5, 300), 1)  # ties, as labs are reported
    spec = {"cdf_values": np.sort(train).tolist(), "percentile_rule": rule, "fill_percentile": 0.5}
    if rule == "mid_rank":
        del spec["percentile_rule"]  # datasets this project preprocessed record no rule
    cdf = np.asarray(spec["cdf_values"])
    pair = percentile_rule(spec)
    for value in np.unique(cdf):
        p = float(pair.percentile(np.array([value]), cdf)[0])
        assert approximate_value(p, spec) == value
    inside = rng.uniform(cdf[0], cdf[-1], 200)
    inside = inside[~np.isin(inside, cdf)]
    back = pair.value(pair.percentile(inside, cdf), cdf)
    below = cdf[np.searchsorted(cdf, inside, side="right") - 1]
    above = cdf[np.searchsorted(cdf, inside, side="left")]
    assert (back >= below).all() and (back <= above).all()
    # Percentiles as labs.npy stores them (float32): the value reads back to its rounding.
    stored = percentiles_from_cdf(cdf[:, None], np.ones((len(cdf), 1)), [spec])[:, 0]
    np.testing.assert_allclose([approximate_value(q, spec) for q in stored], cdf, rtol=1e-5)


def test_the_ecdf_right_rule_reads_back_what_the_mid_rank_inverse_would_not() -> None:
    """An imported release's percentile, read back with the mid-rank inverse, lands half a
    CDF step off: the spec's own rule must choose the inverse."""
    spec = {
        "cdf_values": [1.0, 2.0, 3.0, 4.0],
        "percentile_rule": "ecdf_right",
        "fill_percentile": 0.5,
    }
    p = float(percentiles_from_cdf(np.array([2.0]), np.array([1]), [spec])[0])
    assert p == 0.5 and approximate_value(p, spec) == 2.0
    assert approximate_value(p, {"cdf_values": spec["cdf_values"]}) == 2.5
    assert np.isnan(approximate_value(0.5, {"cdf_values": []}))
    with pytest.raises(ValueError, match="percentile_rule"):
        percentile_rule({"cdf_values": [1.0], "percentile_rule": "quantile"})
