"""Retrieval metrics against obviously-correct loops."""

from __future__ import annotations

import numpy as np
import pytest

from symile_clinical.evaluation.retrieval import (
    candidate_set_scores,
    chance_top1,
    mean_reciprocal_rank,
    median_rank,
    recall_at_k,
    top1_correct,
    top_k_indices,
    true_item_ranks,
)


def naive_rank(row: list[float], true: int, rng: np.random.Generator) -> int:
    """Shuffle the candidates, stable-sort by score, and find the true one: the textbook way."""
    order = list(rng.permutation(len(row)))
    order.sort(key=lambda j: -row[j])  # list.sort is stable: ties keep the shuffled order
    return order.index(true) + 1


def test_ranks_match_a_loop_without_ties() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(200, 10))
    true = rng.integers(0, 10, size=200)
    ranks = true_item_ranks(scores, true, np.random.default_rng(0))
    for q in range(200):
        expected = 1 + sum(scores[q, j] > scores[q, true[q]] for j in range(10))
        assert ranks[q] == expected
        assert ranks[q] == naive_rank(list(scores[q]), int(true[q]), rng)


def test_tie_breaking_is_uniform_like_a_shuffle() -> None:
    # Rows with heavy ties (scores in {0, 1}): the rank distribution must match shuffling.
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 2, size=(4000, 6)).astype(np.float32)
    true = rng.integers(0, 6, size=4000)
    fast = true_item_ranks(scores, true, np.random.default_rng(3))
    slow = np.array([naive_rank(list(scores[q]), int(true[q]), rng) for q in range(4000)])
    fast_hist = np.bincount(fast, minlength=7)[1:] / 4000
    slow_hist = np.bincount(slow, minlength=7)[1:] / 4000
    # Each bin's frequency has SE <= 0.008 per method; 0.04 is ~3.5 SE of the difference.
    np.testing.assert_allclose(fast_hist, slow_hist, atol=0.04)
    # And each row's rank stays inside its deterministic bounds.
    t = scores[np.arange(4000), true]
    assert np.all(fast >= 1 + (scores > t[:, None]).sum(1))
    assert np.all(fast <= (scores >= t[:, None]).sum(1))


def test_constant_scores_give_chance_top1() -> None:
    scores = np.zeros((20000, 10))
    true = np.zeros(20000, dtype=int)  # argmax would call every query a hit
    ranks = true_item_ranks(scores, true, np.random.default_rng(0))
    assert abs(top1_correct(ranks).mean() - chance_top1(10)) < 0.01
    assert abs(ranks.mean() - 5.5) < 0.06


def test_ranks_are_reproducible_from_the_seed() -> None:
    scores = np.zeros((50, 4))
    true = np.zeros(50, dtype=int)
    a = true_item_ranks(scores, true, np.random.default_rng(7))
    b = true_item_ranks(scores, true, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_rank_input_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\[Q, K\]"):
        true_item_ranks(np.zeros(3), np.zeros(3, dtype=int), rng)
    with pytest.raises(ValueError, match="outside"):
        true_item_ranks(np.zeros((2, 3)), np.array([0, 3]), rng)
    with pytest.raises(ValueError, match="NaN"):
        true_item_ranks(np.array([[np.nan, 1.0]]), np.array([0]), rng)


def test_summary_metrics_match_loops() -> None:
    rng = np.random.default_rng(4)
    ranks = rng.integers(1, 31, size=501)
    for k in (1, 5, 10):
        assert recall_at_k(ranks, k) == pytest.approx(sum(r <= k for r in ranks) / len(ranks))
    assert mean_reciprocal_rank(ranks) == pytest.approx(sum(1 / r for r in ranks) / len(ranks))
    assert median_rank(ranks) == sorted(ranks)[len(ranks) // 2]  # odd count: middle one
    np.testing.assert_array_equal(top1_correct(ranks), [1.0 if r == 1 else 0.0 for r in ranks])


def test_candidate_set_scores_gather_from_the_pool() -> None:
    rng = np.random.default_rng(5)
    pool = rng.normal(size=(6, 20))
    rows = rng.integers(0, 20, size=(6, 4))
    gathered = candidate_set_scores(pool, rows)
    for q in range(6):
        for k in range(4):
            assert gathered[q, k] == pool[q, rows[q, k]]


def test_top_k_indices_match_sorting_and_break_ties_fairly() -> None:
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(30, 12))
    top = top_k_indices(scores, 5, np.random.default_rng(0))
    for q in range(30):
        assert list(top[q]) == sorted(range(12), key=lambda j: -scores[q, j])[:5]
    # All-tied rows: each column should come first about equally often.
    firsts = top_k_indices(np.zeros((6000, 3)), 1, np.random.default_rng(1))[:, 0]
    np.testing.assert_allclose(np.bincount(firsts) / 6000, [1 / 3] * 3, atol=0.03)
    assert top_k_indices(scores, 50, rng).shape == (30, 12)


@pytest.mark.parametrize("objective", ["symile", "clip", "gram", "triangle"])
def test_rank_queries_ranks_by_each_objectives_own_score(objective: str) -> None:
    """Every query against the pool in small chunks equals a per-query loop over the
    objective's own score function."""
    import torch

    from symile_clinical.evaluation.retrieval import rank_queries
    from symile_clinical.formats.dataset_dir import CandidateSets
    from symile_clinical.objective.scores import objective_score

    rng = np.random.default_rng(7)
    n, d, k = 12, 6, 4
    ecg, labs, cxr = (rng.normal(size=(n, d)).astype(np.float32) for _ in range(3))
    query_rows = np.arange(n)
    others = [rng.choice(np.delete(np.arange(n), q), k - 1, replace=False) for q in query_rows]
    candidate_rows = np.stack([np.append(o, q) for o, q in zip(others, query_rows, strict=True)])
    sets = CandidateSets(query_rows, candidate_rows, np.full(n, k - 1))
    ranks = rank_queries(objective, ecg, labs, cxr, sets, seed=0, chunk=5)
    score = objective_score(objective)
    for q in range(n):
        row = score(
            torch.from_numpy(cxr[candidate_rows[q]]),
            [torch.from_numpy(ecg[q : q + 1]), torch.from_numpy(labs[q : q + 1])],
        )[0].numpy()
        np.testing.assert_allclose(ranks.candidate_scores[q], row, rtol=1e-5, atol=1e-6)
        assert ranks.candidate_ranks[q] == 1 + int((row > row[-1]).sum())
