"""Retrieval scores: how well each candidate fits each query, for Symile and for CLIP.

Symile's score is the multilinear inner product MIP(q_1, ..., q_n, c) = sum_d q_1d ... q_nd c_d,
which is one dot product between the element-wise product of the queries and the candidate;
a CLIP model scores a candidate by the sum of its dot products with each query modality.
Both are a single matrix product, so candidate search is exact and fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch import Tensor

ScoreFn = Callable[[Tensor, Sequence[Tensor]], Tensor]


def check_score_inputs(candidates: Tensor, queries: Sequence[Tensor]) -> None:
    """ValueError unless candidates are [K, d] and the queries one or more [B, d] tensors."""
    if candidates.dim() != 2:
        raise ValueError(f"candidates must be [K, d], got shape {tuple(candidates.shape)}")
    if len(queries) == 0:
        raise ValueError("at least one query modality is needed")
    for q in queries:
        if q.dim() != 2 or q.shape != queries[0].shape or q.shape[1] != candidates.shape[1]:
            raise ValueError(
                f"queries must all be [B, {candidates.shape[1]}], "
                f"got {[tuple(x.shape) for x in queries]}"
            )


def symile_query_vector(queries: Sequence[Any]) -> Any:
    """Symile's query vector: the element-wise product of the query embeddings ([B, d] each,
    torch or numpy), so that MIP(q_1, ..., q_n, c) = <q_1 * ... * q_n, c>."""
    product = queries[0]
    for q in queries[1:]:
        product = product * q
    return product


def clip_query_vector(queries: Sequence[Any]) -> Any:
    """CLIP's query vector: the sum of the query embeddings ([B, d] each, torch or numpy),
    since sum_m <q_m, c> = <sum_m q_m, c>."""
    total = queries[0]
    for q in queries[1:]:
        total = total + q
    return total


def query_vector(objective: str, queries: Sequence[Any]) -> Any:
    """The vector each candidate is dotted with under `objective` ("symile" | "clip")."""
    if objective == "symile":
        return symile_query_vector(queries)
    if objective == "clip":
        return clip_query_vector(queries)
    raise ValueError(f"unknown objective {objective!r}: expected 'symile' or 'clip'")


def mip_scores(candidates: Tensor, queries: Sequence[Tensor]) -> Tensor:
    """Symile scores [B, K]: entry (b, k) = MIP(queries[0][b], ..., queries[-1][b], candidates[k]).

    candidates: [K, d]; queries: one [B, d] tensor per query modality (same dtype and device).
    Equal to `symile.MIPSimilarity()(candidates, queries)`.
    """
    check_score_inputs(candidates, queries)
    return symile_query_vector(queries) @ candidates.T


def clip_scores(candidates: Tensor, queries: Sequence[Tensor]) -> Tensor:
    """Pairwise-CLIP scores [B, K]: entry (b, k) = sum over query modalities m of <q_m[b], c_k>.

    candidates: [K, d]; queries: one [B, d] tensor per query modality.
    """
    check_score_inputs(candidates, queries)
    return clip_query_vector(queries) @ candidates.T


def score_fn(objective: Literal["symile", "clip"]) -> ScoreFn:
    """The inner-product scoring function of "symile" (mip_scores) or "clip" (clip_scores);
    every objective's score, GRAM's, TRIANGLE's and Gated Symile's too, is
    objective.scores.objective_score's."""
    if objective == "symile":
        return mip_scores
    if objective == "clip":
        return clip_scores
    raise ValueError(f"unknown objective {objective!r}: expected 'symile' or 'clip'")
