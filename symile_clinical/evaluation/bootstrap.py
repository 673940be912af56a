"""Seeded bootstrap over queries: mean, standard error and 95% CI, and paired differences.

A metric here is a per-query value (1.0/0.0 for a top-1 hit, 1/rank for MRR, ...), so
that resampling queries with replacement resamples the test set. The resampled query
indices depend only on (number of queries, number of resamples, seed): two runs evaluated
on the same test queries with the same seed see exactly the same resamples, which is what
makes the paired difference paired.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
# Resamples are drawn in blocks so that [B, Q] index matrices never need to fit at once.
_BLOCK = 128


@dataclass(frozen=True)
class BootstrapEstimate:
    """A statistic over queries with its bootstrap standard error and percentile CI."""

    estimate: float  # the statistic on the full sample (not the bootstrap mean)
    se: float  # standard deviation of the bootstrap distribution
    ci_low: float
    ci_high: float
    n: int  # number of queries
    n_resamples: int
    confidence: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready dict of the fields."""
        return asdict(self)

    def contains(self, value: float) -> bool:
        """Whether value lies inside the confidence interval (inclusive)."""
        return self.ci_low <= value <= self.ci_high


@dataclass(frozen=True)
class PairedDifference:
    """Mean(a) - mean(b) over the same resampled queries, with its bootstrap CI."""

    difference: BootstrapEstimate
    fraction_a_better: float  # share of resamples where mean(a) > mean(b)

    @property
    def significant(self) -> bool:
        """True when the CI of the difference excludes 0."""
        return not self.difference.contains(0.0)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {
            **self.difference.to_dict(),
            "fraction_a_better": self.fraction_a_better,
            "significant": self.significant,
        }


def resample_index_blocks(
    n: int, n_resamples: int, seed: int, block: int = _BLOCK
) -> Iterator[np.ndarray]:
    """Yield int64 [b, n] blocks of query indices drawn with replacement, n_resamples rows in all.

    Deterministic in (n, n_resamples, seed, block); its own generator, never global state.
    """
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(block, n_resamples - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def bootstrap_means(
    values: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Means of `values` (float [Q]) over n_resamples resamples of its queries: float64 [B]."""
    values = _as_values(values)
    out = np.empty(n_resamples, dtype=np.float64)
    start = 0
    for idx in resample_index_blocks(values.size, n_resamples, seed):
        out[start : start + len(idx)] = values[idx].mean(axis=1)
        start += len(idx)
    return out


def bootstrap_mean(
    values: np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
) -> BootstrapEstimate:
    """Mean of per-query values with bootstrap SE and percentile CI."""
    values = _as_values(values)
    means = bootstrap_means(values, n_resamples, seed)
    return _estimate(float(values.mean()), means, values.size, confidence)


def paired_bootstrap_difference(
    values_a: np.ndarray,
    values_b: np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
) -> PairedDifference:
    """mean(a) - mean(b), where a[q] and b[q] are two runs' values on the same query q.

    Each resample draws one set of queries and takes both means over it, so the query-to-
    query variation common to both runs cancels. Same seed as `bootstrap_mean` gives the
    same resamples as each run's own CI.
    """
    values_a, values_b = _as_values(values_a), _as_values(values_b)
    if values_a.shape != values_b.shape:
        raise ValueError(
            f"paired values need the same queries: {values_a.shape} vs {values_b.shape}"
        )
    diffs = bootstrap_means(values_a - values_b, n_resamples, seed)
    estimate = float(values_a.mean() - values_b.mean())
    return PairedDifference(
        difference=_estimate(estimate, diffs, values_a.size, confidence),
        fraction_a_better=float((diffs > 0).mean()),
    )


def _as_values(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D array of per-query values, got {values.shape}")
    return values


def _estimate(
    estimate: float, resampled: np.ndarray, n: int, confidence: float
) -> BootstrapEstimate:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    se = float(resampled.std(ddof=1)) if resampled.size > 1 else float("nan")
    return BootstrapEstimate(
        estimate=estimate,
        se=se,
        ci_low=float(low),
        ci_high=float(high),
        n=n,
        n_resamples=int(resampled.size),
        confidence=confidence,
    )
