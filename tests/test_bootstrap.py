"""Bootstrap estimates against a plain loop and against textbook standard errors."""

from __future__ import annotations

import numpy as np
import pytest

from symile_clinical.evaluation.bootstrap import (
    bootstrap_mean,
    bootstrap_means,
    paired_bootstrap_difference,
    resample_index_blocks,
)


def test_bootstrap_means_match_a_loop_over_the_same_resamples() -> None:
    values = np.random.default_rng(0).random(37)
    fast = bootstrap_means(values, n_resamples=300, seed=11)
    blocks = np.concatenate(list(resample_index_blocks(37, 300, seed=11)))
    assert blocks.shape == (300, 37)
    slow = [sum(values[i] for i in row) / 37 for row in blocks]
    np.testing.assert_allclose(fast, slow)


def test_resamples_do_not_depend_on_block_size() -> None:
    # Generator.integers consumes its stream element by element, so blocks are just a
    # memory bound: the same seed gives the same resamples whatever the block.
    a = np.concatenate(list(resample_index_blocks(50, 100, seed=3, block=7)))
    b = np.concatenate(list(resample_index_blocks(50, 100, seed=3, block=128)))
    np.testing.assert_array_equal(a, b)


def test_estimate_se_and_ci_of_a_proportion() -> None:
    rng = np.random.default_rng(1)
    hits = (rng.random(400) < 0.3).astype(float)
    est = bootstrap_mean(hits, n_resamples=2000, seed=0)
    p = hits.mean()
    assert est.estimate == pytest.approx(p)
    # Bootstrap SE of a mean ~ sqrt(p(1-p)/n), the binomial formula.
    assert est.se == pytest.approx(np.sqrt(p * (1 - p) / 400), rel=0.1)
    assert est.ci_low < p < est.ci_high
    assert est.ci_high - est.ci_low == pytest.approx(2 * 1.96 * est.se, rel=0.12)
    assert est.n == 400 and est.n_resamples == 2000 and est.confidence == 0.95
    assert bootstrap_mean(hits, 2000, seed=0) == est  # seeded: same numbers again


def test_ci_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(200):
        sample = (rng.random(100) < 0.1).astype(float)
        covered += bootstrap_mean(sample, n_resamples=300, seed=int(rng.integers(1e9))).contains(
            0.1
        )
    # Percentile CIs of a small proportion undercover a little; 85-100% is the sane band.
    assert 0.85 <= covered / 200 <= 1.0


def test_paired_difference_cancels_shared_query_difficulty() -> None:
    rng = np.random.default_rng(3)
    n = 500
    easy = rng.random(n) < 0.5  # half the queries are easy for both runs
    a = (easy | (rng.random(n) < 0.10)).astype(float)
    b = (easy & (rng.random(n) < 0.95)).astype(float)
    paired = paired_bootstrap_difference(a, b, n_resamples=1000, seed=0)
    assert paired.difference.estimate == pytest.approx(a.mean() - b.mean())
    # Independent SEs would add: sqrt(se_a^2 + se_b^2); pairing must do much better here.
    se_a = bootstrap_mean(a, 1000, seed=0).se
    se_b = bootstrap_mean(b, 1000, seed=0).se
    assert paired.difference.se < 0.6 * np.hypot(se_a, se_b)
    assert paired.significant and paired.fraction_a_better > 0.99
    # The per-resample difference equals the difference of the two runs' own resampled means.
    diffs = bootstrap_means(a - b, 1000, seed=0)
    np.testing.assert_allclose(
        diffs, bootstrap_means(a, 1000, seed=0) - bootstrap_means(b, 1000, seed=0)
    )


def test_identical_runs_have_zero_difference() -> None:
    a = (np.random.default_rng(4).random(80) < 0.4).astype(float)
    paired = paired_bootstrap_difference(a, a.copy(), n_resamples=200, seed=1)
    assert paired.difference.estimate == 0.0
    assert paired.difference.ci_low == paired.difference.ci_high == 0.0
    assert not paired.significant
    assert paired.to_dict()["significant"] is False


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap_difference(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean(np.array([]))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean(np.ones(3), confidence=1.5)
