"""Retrieval metrics over score matrices: rank of the true item, top-1, recall@k, MRR.

Pure functions over numpy arrays, no model and no files. A score matrix is float [Q, K]:
row q holds the model's score of each of K candidates for query q, higher is better, and
`true_index` int [Q] says which column is the right answer.

Ties are broken at random, as the paper's protocol asks: a model that gives every
candidate the same score must score at chance, not at 100% (argmax picks the first
column) or 0%. With t other candidates tied with the true one, random tie-breaking puts
the true item at a uniformly random place among the t + 1, so its rank is
1 + (number scored strictly higher) + Uniform{0..t}; sampling that directly is exact and
needs no permutation of the matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from symile_clinical.formats.dataset_dir import CandidateSets
from symile_clinical.objective.scores import ObjectiveScore, labs_missing_flags, objective_score

# Queries scored against the whole pool at once: a [chunk, N] float32 block in memory.
QUERY_CHUNK = 1024
# Scores that are not one matrix product hold a few [chunk, N] blocks (GRAM: [chunk, N, 3, 3])
# at once: at most this many query-candidate pairs per chunk.
PAIRS_PER_CHUNK = 1 << 22


def true_item_ranks(
    scores: np.ndarray, true_index: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """1-based rank of the true candidate in each row, ties broken at random.

    scores: float [Q, K]; true_index: int [Q] in 0..K-1; returns int64 [Q] in 1..K.
    NaN scores are an error (they would rank arbitrarily).
    """
    scores = np.asarray(scores)
    true_index = np.asarray(true_index, dtype=np.int64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [Q, K], got shape {scores.shape}")
    if true_index.shape != (scores.shape[0],):
        raise ValueError(f"true_index must be [{scores.shape[0]}], got shape {true_index.shape}")
    if scores.shape[0] and (true_index.min() < 0 or true_index.max() >= scores.shape[1]):
        raise ValueError(f"true_index outside 0..{scores.shape[1] - 1}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    true_scores = np.take_along_axis(scores, true_index[:, None], axis=1)
    higher = (scores > true_scores).sum(axis=1)
    # The true item ties with itself; the others tied with it are the rest.
    tied_others = (scores == true_scores).sum(axis=1) - 1
    place_among_ties = rng.integers(0, tied_others + 1)
    return (1 + higher + place_among_ties).astype(np.int64)


def top1_correct(ranks: np.ndarray) -> np.ndarray:
    """Per-query top-1 hit from ranks: float64 [Q] of 0.0/1.0 (ready to bootstrap)."""
    return (np.asarray(ranks) == 1).astype(np.float64)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose true item is ranked within the top k."""
    ranks = np.asarray(ranks)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float((ranks <= k).mean()) if ranks.size else float("nan")


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    """Mean of 1 / rank over queries."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float((1.0 / ranks).mean()) if ranks.size else float("nan")


def median_rank(ranks: np.ndarray) -> float:
    """Median 1-based rank of the true item (lower is better)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.median(ranks)) if ranks.size else float("nan")


def chance_top1(n_candidates: int) -> float:
    """Top-1 accuracy of a random ranking among n_candidates."""
    return 1.0 / n_candidates


def candidate_set_scores(pool_scores: np.ndarray, candidate_rows: np.ndarray) -> np.ndarray:
    """Scores of each query's own candidate set, gathered from its scores over the pool.

    pool_scores: float [Q, N] (query q against every item of the pool);
    candidate_rows: int [Q, K] pool rows of q's candidates; returns float [Q, K].
    """
    return np.take_along_axis(pool_scores, np.asarray(candidate_rows, dtype=np.int64), axis=1)


def top_k_indices(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Column indices of the k best candidates per row, best first, ties broken at random.

    scores: float [Q, K]; returns int64 [Q, min(k, K)]. Used to show a query's top hits.
    """
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    # A random secondary key makes lexsort's order among equal scores uniform.
    jitter = rng.random(scores.shape)
    order = np.lexsort((jitter, -scores), axis=1)
    return order[:, :k].astype(np.int64)


@dataclass
class QueryRanks:
    """Per-query ranks of the true CXR (1-based) and the candidate-set scores."""

    candidate_ranks: np.ndarray  # int64 [Q], within the query's K candidates
    pool_ranks: np.ndarray  # int64 [Q], within the whole split
    candidate_scores: np.ndarray  # float32 [Q, K]

    def candidate_top1(self) -> float:
        """Fraction of queries whose true CXR ranks first among its candidates."""
        return float((self.candidate_ranks == 1).mean()) if len(self.candidate_ranks) else 0.0


def rank_queries(
    objective: str | ObjectiveScore,
    ecg: np.ndarray,
    labs: np.ndarray,
    cxr: np.ndarray,
    sets: CandidateSets,
    seed: int,
    chunk: int = QUERY_CHUNK,
    labs_missing: np.ndarray | None = None,
) -> QueryRanks:
    """Rank each query's true CXR within its candidate set and within the whole pool.

    ecg, labs, cxr: float32 [N, d] embeddings of the split's rows; query q is row
    sets.query_rows[q] and its true CXR is the same row. Scores come from the objective's
    score (objective.scores: a name, or an ObjectiveScore, which Gated Symile needs for its
    gate), a chunk of queries against the pool at a time. labs_missing: bool [N] per split
    row, True = the labs flagged missing (only Gated Symile's score reads it). Candidate ties
    break with np.random.default_rng(seed) over all queries in one draw; pool ties with
    ([seed, 1]). Training's validation accuracy and evaluation both rank here.
    """
    scorer = objective if isinstance(objective, ObjectiveScore) else objective_score(objective)
    pool = torch.from_numpy(np.ascontiguousarray(cxr, dtype=np.float32))
    q_ecg = torch.from_numpy(np.ascontiguousarray(ecg[sets.query_rows], dtype=np.float32))
    q_labs = torch.from_numpy(np.ascontiguousarray(labs[sets.query_rows], dtype=np.float32))
    flags = None
    if labs_missing is not None:
        missing = np.asarray(labs_missing, dtype=bool)[sets.query_rows]
        flags = labs_missing_flags(torch.from_numpy(np.ascontiguousarray(missing)))
    if not scorer.is_inner_product:
        chunk = max(1, min(chunk, PAIRS_PER_CHUNK // max(len(pool), 1)))
    n_queries = len(sets)
    candidate_scores = np.empty(sets.candidate_rows.shape, dtype=np.float32)
    pool_ranks = np.empty(n_queries, dtype=np.int64)
    pool_rng = np.random.default_rng([seed, 1])
    for start in range(0, n_queries, chunk):
        part = slice(start, min(start + chunk, n_queries))
        part_flags = flags[part] if flags is not None else None
        scores = scorer(pool, [q_ecg[part], q_labs[part]], part_flags).numpy()
        candidate_scores[part] = candidate_set_scores(scores, sets.candidate_rows[part])
        pool_ranks[part] = true_item_ranks(scores, sets.query_rows[part], pool_rng)
    candidate_ranks = true_item_ranks(
        candidate_scores, sets.true_position, np.random.default_rng(seed)
    )
    return QueryRanks(candidate_ranks, pool_ranks, candidate_scores)
