"""Retrieval scores against the reference package and against per-pair loops."""

from __future__ import annotations

import pytest
import torch
from symile import MIPSimilarity

from symile_clinical.objective.similarity import clip_scores, mip_scores, score_fn


def _embeddings(n: int, rows: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, d, generator=g, dtype=torch.float64) for _ in range(n)]


@pytest.mark.parametrize("num_queries", [1, 2, 3])
def test_mip_scores_equal_reference(num_queries: int) -> None:
    (candidates,) = _embeddings(1, 10, 16, seed=0)
    queries = _embeddings(num_queries, 7, 16, seed=1)
    expected = MIPSimilarity()(candidates, [q.clone() for q in queries])
    torch.testing.assert_close(mip_scores(candidates, queries), expected, rtol=1e-12, atol=0)


def test_mip_scores_equal_a_loop_over_pairs() -> None:
    (candidates,) = _embeddings(1, 6, 5, seed=2)
    ecg, labs = _embeddings(2, 4, 5, seed=3)
    scores = mip_scores(candidates, [ecg, labs])
    assert scores.shape == (4, 6)
    for b in range(4):
        for k in range(6):
            expected = (ecg[b] * labs[b] * candidates[k]).sum()
            torch.testing.assert_close(scores[b, k], expected, rtol=1e-12, atol=1e-12)


def test_clip_scores_sum_dot_products_with_each_query() -> None:
    (candidates,) = _embeddings(1, 6, 5, seed=4)
    ecg, labs = _embeddings(2, 4, 5, seed=5)
    scores = clip_scores(candidates, [ecg, labs])
    for b in range(4):
        for k in range(6):
            expected = ecg[b] @ candidates[k] + labs[b] @ candidates[k]
            torch.testing.assert_close(scores[b, k], expected, rtol=1e-12, atol=1e-12)


def test_score_fn_matches_objective() -> None:
    assert score_fn("symile") is mip_scores
    assert score_fn("clip") is clip_scores
    with pytest.raises(ValueError, match="unknown objective"):
        score_fn("infonce")  # type: ignore[arg-type]


def test_mismatched_dimensions_are_rejected() -> None:
    with pytest.raises(ValueError, match="queries must all be"):
        mip_scores(torch.zeros(3, 4), [torch.zeros(2, 4), torch.zeros(2, 5)])
    with pytest.raises(ValueError, match="candidates must be"):
        clip_scores(torch.zeros(4), [torch.zeros(2, 4)])


def test_objective_scores_say_which_are_inner_products() -> None:
    from symile_clinical.formats.run_config import OBJECTIVES
    from symile_clinical.objective.scores import (
        SCORED_OBJECTIVES,
        objective_score,
        score_is_inner_product,
    )

    assert set(SCORED_OBJECTIVES) == set(OBJECTIVES)
    assert {o: score_is_inner_product(o) for o in OBJECTIVES} == {
        "symile": True,
        "clip": True,
        "gram": False,
        "triangle": False,
        "gated-symile": False,
    }
    g = torch.Generator().manual_seed(0)
    pool, e, lab = (torch.randn(n, 8, generator=g) for n in (5, 3, 3))
    # The inner-product objectives' scores are their query vectors dotted with candidates.
    assert torch.equal(objective_score("symile")(pool, [e, lab]), mip_scores(pool, [e, lab]))
    assert torch.equal(objective_score("clip")(pool, [e, lab]), clip_scores(pool, [e, lab]))
    with pytest.raises(ValueError, match="unknown objective"):
        objective_score("infonce")
    with pytest.raises(ValueError, match="gate"):
        objective_score("gated-symile")
