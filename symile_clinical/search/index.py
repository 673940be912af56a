"""The candidate index: a pool of chest X-rays embedded once, searched by inner product.

Symile scores a triple by the multilinear inner product, MIP(e, l, c) = <e * l, c>, so for a
query (ECG embedding e, labs embedding l) the whole pool is ranked by one matrix product
with the query vector q = e * l. Pairwise CLIP scores a candidate by the sum of its dot
products with each query modality, <e, c> + <l, c> = <e + l, c>, so its query vector is
q = e + l (the same scores as objective.similarity). Exact search by matrix product is the
default; an optional faiss backend (flat, or approximate: an HNSW graph or IVF lists, both
searching by inner product itself) serves pools of millions, tuned and reported by its
recall against exact search. `CandidateIndex.rank` is one query over a pool as the app shows
it: the top k with their softmax probabilities over the pool and the true candidate's rank.

GRAM (-volume), TRIANGLE (-area) and Gated Symile (the gate asks each candidate) score a
candidate by a function that is not an inner product <q, c> (objective/scores.py): their
queries are the query embeddings themselves ([ecg, labs]), and exact search scores every
candidate with the objective's own function. Asking an inner-product index (a query vector,
faiss) for such an objective raises NotInnerProductError: it is never approximated. Gated
Symile's score needs the run's gate: an index opened with `ensure_index` or `build_index`
(from a loaded run) carries it; `load_index` alone cannot score gated-symile queries.

On disk, ``RUN/index/`` holds::

    embeddings.npy   float32 [N, d]      candidate CXR embeddings, row i = position i
    metadata.parquet one row per position: position, row (in the split), ids, times
    thumbnails.npy   uint8   [N, T, T]   downsampled CXRs for display (0 = black)
    index.json       schema, checkpoint sha256, dataset, split, shapes (written last)

The folder is written beside the run as a temporary folder and swapped in with renames,
so a reader sees the old index or the new one, never half of one. An index built from a
different checkpoint or dataset is stale: `load_index` refuses it (StaleIndexError) and
`ensure_index` rebuilds it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from symile_clinical.errors import SymileClinicalError
from symile_clinical.evaluation.embedding import embed_cxr_pool, embed_queries
from symile_clinical.evaluation.retrieval import PAIRS_PER_CHUNK
from symile_clinical.formats.atomic import atomic_directory
from symile_clinical.formats.dataset_dir import DatasetDir, SplitArrays
from symile_clinical.formats.run_dir import LoadedRun, RunDir
from symile_clinical.objective.scores import (
    ObjectiveScore,
    labs_missing_flags,
    objective_score,
    score_is_inner_product,
)
from symile_clinical.objective.similarity import query_vector

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
INDEX_JSON = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
METADATA_FILE = "metadata.parquet"
THUMBNAILS_FILE = "thumbnails.npy"
# Columns of the dataset manifest carried into the index metadata (docs/formats.md).
METADATA_COLUMNS = (
    "row",
    "subject_id",
    "hadm_id",
    "dicom_id",
    "cxr_study_id",
    "cxr_path",
    "cxr_time",
)


class CandidateIndexError(SymileClinicalError):
    """An index folder that cannot be used, with the path and the reason."""


class StaleIndexError(CandidateIndexError):
    """The index was built from another checkpoint or dataset than the one asked for."""


class NotInnerProductError(CandidateIndexError):
    """An inner-product search (a query vector, a faiss index) asked of an objective whose
    score is not an inner product: exact search with its own score is the only way."""


def require_inner_product(objective: str, where: str | Path) -> None:
    """Raise NotInnerProductError naming `where` when `objective`'s score is not an inner
    product (objective/scores.py), so an inner-product index cannot serve it."""
    if not score_is_inner_product(objective):
        raise NotInnerProductError(
            where,
            f"{objective}'s score of a candidate is not an inner product <q, c>, so an "
            "inner-product index (faiss, a query vector) cannot serve it without "
            "approximating; search exactly with the query embeddings instead",
        )


@dataclass(frozen=True)
class SearchResult:
    """Top-k of each query: positions in the index and their scores, best first."""

    positions: np.ndarray  # int64 [B, k]
    scores: np.ndarray  # float32 [B, k]


@dataclass(frozen=True)
class Ranking:
    """One query's top-k of a pool (index positions, scores, softmax probabilities over the
    whole pool), and where the true candidate ranks when it was asked for and is in the pool."""

    positions: np.ndarray  # int64 [k]
    scores: np.ndarray  # float32 [k]
    probabilities: np.ndarray  # float32 [k], softmax over the whole pool
    pool_size: int
    true_position: int | None = None
    true_rank: int | None = None  # 1-based rank of the true candidate in the pool
    true_score: float | None = None
    true_probability: float | None = None


# ---------------------------------------------------------------------------------------
# Queries and exact search (pure numpy)


def top_k_order(scores: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    """Indices into one query's scores [P] (over positions [P]) of its top k, best first;
    ties go to the lower position."""
    keep = np.arange(len(scores))
    if len(scores) > k:
        kth = scores[np.argpartition(-scores, k - 1)[:k]].min()
        # argpartition may cut inside a run of tied scores: take every tie of the k-th value.
        keep = np.flatnonzero(scores >= kth)
    return keep[np.lexsort((positions[keep], -scores[keep]))[:k]]


def top_k_sorted(scores: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Top-k of one query's scores [P] over positions [P]: (positions [k], scores [k]), best
    first; ties go to the lower position."""
    order = top_k_order(scores, positions, k)
    return positions[order], scores[order]


def pool_scores(
    embeddings: np.ndarray, query: np.ndarray, pool: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One query vector [d] against a pool (positions [P]; None = every embedding):
    (positions int64 [P], inner-product scores [P])."""
    if pool is None:  # no fancy-indexed copy of a large index
        return np.arange(len(embeddings), dtype=np.int64), embeddings @ query
    positions = np.asarray(pool, dtype=np.int64)
    return positions, embeddings[positions] @ query


def exact_search(
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int,
    within: np.ndarray | None = None,
    chunk: int = 262_144,
) -> SearchResult:
    """Exact top-k by inner product: queries [B, d] against embeddings [N, d]; chunked over N.

    within: optional [B, K] positions restricting each query to its own candidate pool
    (the paper's 10 candidates). Ties go to the lower position.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    n_queries = len(queries)
    if within is not None:
        within = np.asarray(within, dtype=np.int64).reshape(n_queries, -1)
        k = min(k, within.shape[1])
        positions = np.empty((n_queries, k), np.int64)
        scores = np.empty((n_queries, k), np.float32)
        for b in range(n_queries):
            pool, pool_scores_b = pool_scores(embeddings, queries[b], within[b])
            positions[b], scores[b] = top_k_sorted(pool_scores_b, pool, k)
        return SearchResult(positions, scores)

    def block_scores(block: np.ndarray) -> np.ndarray:
        return queries @ block.T  # [B, chunk]

    return _top_k_over_blocks(embeddings, n_queries, block_scores, k, chunk)


def _top_k_over_blocks(
    embeddings: np.ndarray,
    n_queries: int,
    block_scores: Callable[[np.ndarray], np.ndarray],
    k: int,
    chunk: int,
) -> SearchResult:
    """Top-k of every query over embeddings [N, d], a chunk of candidates at a time:
    block_scores(block [c, d]) -> [B, c] scores. Ties go to the lower position."""
    n = len(embeddings)
    k = min(k, n)
    best_pos = np.zeros((n_queries, 0), np.int64)
    best_scores = np.zeros((n_queries, 0), np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(embeddings[start : start + chunk], dtype=np.float32)
        scores = block_scores(block)
        block_pos = np.arange(start, start + len(block), dtype=np.int64)
        merged_pos = np.empty((n_queries, min(k, best_pos.shape[1] + len(block))), np.int64)
        merged_scores = np.empty(merged_pos.shape, np.float32)
        for b in range(n_queries):
            cand_scores = np.concatenate([best_scores[b], scores[b]])
            cand_pos = np.concatenate([best_pos[b], block_pos])
            merged_pos[b], merged_scores[b] = top_k_sorted(cand_scores, cand_pos, k)
        best_pos, best_scores = merged_pos, merged_scores
    return SearchResult(best_pos, best_scores)


def softmax_probabilities(scores: np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax over the last axis of logit_scale * scores (the training objective's logits)."""
    logits = logit_scale * np.asarray(scores, dtype=np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Optional faiss backend


FaissKind = Literal["flat", "hnsw", "ivf"]


def default_nlist(n: int) -> int:
    """IVF lists for N candidates: about 4 sqrt(N) (1M -> 4000), at least 1, and at most
    N / 39 so that k-means has the 39 points per centroid faiss asks for."""
    return int(max(1, min(round(4 * np.sqrt(n)), n // 39)))


class FaissSearcher:
    """Inner-product search with faiss over candidate embeddings [N, d].

    - 'flat': exact (IndexFlatIP), a check of the others;
    - 'hnsw': a graph built and searched by inner product itself (IndexHNSWFlat with
      METRIC_INNER_PRODUCT); `ef_search` trades speed for recall;
    - 'ivf': k-means lists searched by inner product (IndexIVFFlat, METRIC_INNER_PRODUCT);
      `nprobe` of the `nlist` lists are scanned per query.

    An earlier version mapped inner product to L2 by norm augmentation (an extra coordinate
    sqrt(M^2 - |c|^2)) and searched an L2 graph: on 100k random vectors that recalled
    0.24 of the exact top 10 where faiss's own inner-product graph recalls 0.79, so the
    graph now searches inner product directly. `tune` sets ef_search / nprobe to reach a
    recall measured against exact search on held-out queries.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        kind: FaissKind = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 256,
        nlist: int | None = None,
        nprobe: int = 16,
        train_size: int = 100_000,
        seed: int = 0,
    ) -> None:
        import faiss

        self.kind = kind
        base = np.ascontiguousarray(embeddings, dtype=np.float32)
        n, dim = base.shape
        if kind == "flat":
            self._index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = ef_construction
        elif kind == "ivf":
            self.nlist = nlist or default_nlist(n)
            self._quantizer = faiss.IndexFlatIP(dim)  # kept: the IVF index refers to it
            self._index = faiss.IndexIVFFlat(
                self._quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT
            )
            rng = np.random.default_rng(seed)
            sample = base[np.sort(rng.choice(n, min(n, train_size), replace=False))]
            self._index.train(sample)
        else:
            raise ValueError(f"unknown faiss index kind {kind!r}: expected flat, hnsw or ivf")
        self._index.add(base)
        self.set_effort(ef_search if kind == "hnsw" else nprobe)

    @property
    def effort(self) -> int | None:
        """efSearch (hnsw) or nprobe (ivf); None for flat."""
        if self.kind == "hnsw":
            return int(self._index.hnsw.efSearch)
        if self.kind == "ivf":
            return int(self._index.nprobe)
        return None

    def set_effort(self, value: int) -> None:
        """Set efSearch (hnsw) or nprobe (ivf, capped at nlist); flat ignores it."""
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = int(value)
        elif self.kind == "ivf":
            self._index.nprobe = int(min(value, self.nlist))

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k positions and inner-product scores for queries [B, d], best first."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, self._index.ntotal)
        scores, positions = self._index.search(queries, k)
        return SearchResult(positions.astype(np.int64), scores.astype(np.float32))

    def tune(
        self,
        queries: np.ndarray,
        exact: SearchResult,
        target_recall: float = 0.95,
        start: int = 8,
        limit: int = 4096,
    ) -> tuple[int | None, float]:
        """Double efSearch / nprobe from `start` until recall@k against `exact` (the exact
        top-k of these `queries`) reaches `target_recall`, or `limit`; keeps the setting.
        Returns (setting, recall at it). Tune on queries other than those reported."""
        k = exact.positions.shape[1]
        if self.kind == "flat":
            return None, recall_against_exact(self.search(queries, k), exact)
        value = start
        while True:
            self.set_effort(value)
            recall = recall_against_exact(self.search(queries, k), exact)
            at_end = value >= limit or (self.kind == "ivf" and value >= self.nlist)
            if recall >= target_recall or at_end:
                return self.effort, recall
            value *= 2


def faiss_recall(
    embeddings: np.ndarray, queries: np.ndarray, kind: FaissKind, k: int = 10
) -> dict[str, float]:
    """Build a FaissSearcher over embeddings and measure it against exact search:
    {"recall_at_k", "k", "build_s", "exact_ms_per_query", "faiss_ms_per_query"}."""
    import time

    k = min(k, len(embeddings))
    start = time.perf_counter()
    searcher = FaissSearcher(embeddings, kind)
    build = time.perf_counter() - start
    start = time.perf_counter()
    exact = exact_search(embeddings, queries, k)
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    approximate = searcher.search(queries, k)
    faiss_s = time.perf_counter() - start
    return {
        "recall_at_k": recall_against_exact(approximate, exact),
        "k": k,
        "build_s": build,
        "exact_ms_per_query": 1000 * exact_s / len(queries),
        "faiss_ms_per_query": 1000 * faiss_s / len(queries),
    }


def recall_against_exact(approximate: SearchResult, exact: SearchResult) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k."""
    k = exact.positions.shape[1]
    hits = [
        len(set(a.tolist()) & set(e.tolist()))
        for a, e in zip(approximate.positions, exact.positions, strict=True)
    ]
    return float(np.mean(hits) / k)


# ---------------------------------------------------------------------------------------
# The index on disk


@dataclass
class CandidateIndex:
    """Embedded candidate CXRs of one dataset split, for one checkpoint of one run."""

    embeddings: np.ndarray  # float32 [N, d]
    metadata: pd.DataFrame  # one row per position
    thumbnails: np.ndarray  # uint8 [N, T, T]
    info: dict[str, Any]
    path: Path | None = None
    # The run's score (objective/scores.py); None: the one info["objective"] names, which
    # Gated Symile cannot use without its gate (ensure_index and build_index set it).
    score: ObjectiveScore | None = None
    _rows_sorted: np.ndarray | None = field(default=None, init=False, repr=False)
    _row_order: np.ndarray | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def objective(self) -> str:
        """The run's objective (formats/run_config.OBJECTIVES): how queries are scored."""
        return str(self.info["objective"])

    @property
    def is_inner_product(self) -> bool:
        """Whether the objective's score is <query vector, candidate> (faiss can serve it);
        an index that names no objective holds inner-product vectors."""
        objective = self.info.get("objective")
        return objective is None or score_is_inner_product(str(objective))

    def objective_score(self) -> ObjectiveScore:
        """The score candidates are ranked by; CandidateIndexError for Gated Symile's index
        opened without its run's gate."""
        if self.score is not None:
            return self.score
        try:
            return objective_score(self.objective)
        except ValueError as error:
            raise CandidateIndexError(
                self.path or "index",
                f"{error}; open the index with ensure_index(loaded run) or build_index",
            ) from error

    def score_queries(
        self,
        candidates: np.ndarray,
        queries: Sequence[np.ndarray],
        labs_missing: np.ndarray | None = None,
    ) -> np.ndarray:
        """Scores float32 [B, P] of candidate embeddings [P, d] for queries given as their
        embeddings ([ecg [B, d], labs [B, d]]) under the objective's own score;
        labs_missing: bool [B] (Gated Symile's NULL option) or None."""
        score = self.objective_score()
        tensors = [
            torch.from_numpy(np.asarray(q, np.float32).reshape(-1, q.shape[-1])) for q in queries
        ]
        flags = None
        if labs_missing is not None:
            flags = labs_missing_flags(torch.from_numpy(np.asarray(labs_missing, dtype=bool)))
        pool = torch.from_numpy(np.ascontiguousarray(candidates, dtype=np.float32))
        return score(pool, tensors, flags).numpy().astype(np.float32, copy=False)

    def _as_query_vectors(self, queries: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Query vectors [B, d] (or [d]) for an inner-product objective: given, or made from
        the query embeddings by similarity.query_vector."""
        if not self.is_inner_product:
            require_inner_product(self.objective, self.path or "index")
        if isinstance(queries, np.ndarray):
            return queries
        return query_vector(self.objective, [np.asarray(q, np.float32) for q in queries])

    @property
    def ids(self) -> np.ndarray:
        """dicom_id of each position; [N] object."""
        return self.metadata["dicom_id"].to_numpy()

    def positions_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Index positions of split rows (the same numbers when the whole split is indexed);
        KeyError for a row the index does not hold."""
        if self._rows_sorted is None:  # built once: the app asks this on every query
            split_rows = self.metadata["row"].to_numpy(dtype=np.int64)
            self._row_order = np.argsort(split_rows, kind="stable")
            self._rows_sorted = split_rows[self._row_order]
        rows = np.asarray(rows, dtype=np.int64)
        at = np.searchsorted(self._rows_sorted, rows).clip(0, max(len(self._rows_sorted) - 1, 0))
        if len(rows) and (len(self._rows_sorted) == 0 or (self._rows_sorted[at] != rows).any()):
            raise KeyError(f"rows not in the index: {rows[self._rows_sorted[at] != rows][:5]}")
        return self.metadata.index.to_numpy()[self._row_order[at]].astype(np.int64)

    def search(
        self,
        query_embeddings: np.ndarray | Sequence[np.ndarray],
        k: int,
        within: np.ndarray | None = None,
        searcher: FaissSearcher | None = None,
        labs_missing: np.ndarray | None = None,
    ) -> SearchResult:
        """Top-k positions and scores: queries as query vectors [B, d]
        (similarity.query_vector; inner-product objectives only) or as their embeddings
        ([ecg [B, d], labs [B, d]]; every objective).

        Exact search by default (a matrix product, or the objective's own score);
        `searcher` (a FaissSearcher over these embeddings) for large pools of an
        inner-product objective (NotInnerProductError otherwise); `within` [B, K] restricts
        each query to a candidate pool; labs_missing bool [B] for Gated Symile's NULL option.
        """
        if searcher is not None or isinstance(query_embeddings, np.ndarray):
            vectors = self._as_query_vectors(query_embeddings)
            if searcher is not None and within is None:
                return searcher.search(vectors, k)
            return exact_search(self.embeddings, vectors, k, within)
        if self.is_inner_product:
            return exact_search(
                self.embeddings, self._as_query_vectors(query_embeddings), k, within
            )
        return self._scored_search(list(query_embeddings), k, within, labs_missing)

    def _scored_search(
        self,
        queries: list[np.ndarray],
        k: int,
        within: np.ndarray | None,
        labs_missing: np.ndarray | None,
    ) -> SearchResult:
        """Exact top-k under a score that is not an inner product: every candidate scored."""
        queries = [np.atleast_2d(np.asarray(q, np.float32)) for q in queries]
        n_queries = len(queries[0])
        if within is not None:
            within = np.asarray(within, dtype=np.int64).reshape(n_queries, -1)
            k = min(k, within.shape[1])
            positions = np.empty((n_queries, k), np.int64)
            scores = np.empty((n_queries, k), np.float32)
            for b in range(n_queries):
                flag = None if labs_missing is None else np.asarray(labs_missing)[b : b + 1]
                pool_b = self.score_queries(
                    self.embeddings[within[b]], [q[b : b + 1] for q in queries], flag
                )[0]
                positions[b], scores[b] = top_k_sorted(pool_b, within[b], k)
            return SearchResult(positions, scores)

        def block_scores(block: np.ndarray) -> np.ndarray:
            return self.score_queries(block, queries, labs_missing)

        chunk = max(1, PAIRS_PER_CHUNK // max(n_queries, 1))
        return _top_k_over_blocks(self.embeddings, n_queries, block_scores, k, chunk)

    def rank(
        self,
        query: np.ndarray | Sequence[np.ndarray],
        k: int,
        logit_scale: float,
        pool: np.ndarray | None = None,
        true_position: int | None = None,
        labs_missing: bool = False,
    ) -> Ranking:
        """One query against a pool (index positions; None = the whole index), scored once:
        its top k, best first (ties go to the lower position), their probabilities
        (softmax_probabilities of the whole pool's scores, the distribution the contrastive
        objective trains) and the rank, score and probability of `true_position` when it is
        in the pool.

        query: its embeddings [ecg [d], labs [d]] (every objective, scored by the objective's
        own score), or a query vector [d] (similarity.query_vector; inner-product objectives
        only). labs_missing: flag the labs missing (Gated Symile's NULL option)."""
        if isinstance(query, np.ndarray) or self.is_inner_product:
            vector = np.asarray(self._as_query_vectors(query), np.float32)
            positions, scores = pool_scores(self.embeddings, vector, pool)
        else:
            positions = (
                np.arange(len(self.embeddings), dtype=np.int64)
                if pool is None
                else np.asarray(pool, dtype=np.int64)
            )
            candidates = self.embeddings if pool is None else self.embeddings[positions]
            rows = [np.asarray(q, np.float32)[None] for q in query]
            flags = np.array([labs_missing]) if labs_missing else None
            scores = self.score_queries(candidates, rows, flags)[0]
        top = top_k_order(scores, positions, k)
        probabilities = softmax_probabilities(scores, logit_scale)
        ranking = Ranking(
            positions[top], scores[top].astype(np.float32), probabilities[top], len(positions)
        )
        hits = np.flatnonzero(positions == true_position) if true_position is not None else []
        if not len(hits):
            return ranking
        true_score = scores[hits[0]]
        # Ranked ahead of the true candidate by the order top_k_order follows.
        ahead = (scores > true_score) | ((scores == true_score) & (positions < true_position))
        return replace(
            ranking,
            true_position=int(true_position),
            true_rank=int(ahead.sum()) + 1,
            true_score=float(true_score),
            true_probability=float(probabilities[hits[0]]),
        )


def read_index_info(run: RunDir) -> dict[str, Any]:
    """The index.json of a run's index; CandidateIndexError when absent or unreadable."""
    path = run.index_dir / INDEX_JSON
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise CandidateIndexError(path, "no index: run `symile-clinical index`") from error
    except (OSError, json.JSONDecodeError) as error:
        raise CandidateIndexError(path, f"unreadable index.json ({error})") from error
    if info.get("schema_version") != SCHEMA_VERSION:
        raise StaleIndexError(path, f"schema_version {info.get('schema_version')!r}")
    return info


def check_current(
    info: dict[str, Any],
    path: Path,
    checkpoint_sha256: str | None = None,
    dataset_sha256: str | None = None,
) -> None:
    """Raise StaleIndexError when the index was built from another checkpoint or dataset."""
    if checkpoint_sha256 is not None and info.get("checkpoint_sha256") != checkpoint_sha256:
        raise StaleIndexError(
            path,
            f"built from checkpoint {str(info.get('checkpoint_sha256'))[:12]}, "
            f"the run's is {checkpoint_sha256[:12]}: rebuild with `symile-clinical index`",
        )
    if dataset_sha256 is not None and info.get("dataset_sha256") != dataset_sha256:
        raise StaleIndexError(path, "built from another dataset.json: rebuild it")


def load_index(
    run: RunDir | Path | str,
    checkpoint_sha256: str | None = None,
    dataset_sha256: str | None = None,
) -> CandidateIndex:
    """Open RUN/index/; refuse (StaleIndexError) an index of another checkpoint or dataset."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    folder = run.index_dir
    info = read_index_info(run)
    check_current(info, folder, checkpoint_sha256, dataset_sha256)
    try:
        embeddings = np.load(folder / EMBEDDINGS_FILE)
        thumbnails = np.load(folder / THUMBNAILS_FILE, mmap_mode="r")
        metadata = pd.read_parquet(folder / METADATA_FILE)
    except (OSError, ValueError) as error:
        raise CandidateIndexError(folder, f"unreadable index files ({error})") from error
    n = info["n"]
    if embeddings.shape != (n, info["dim"]) or len(thumbnails) != n or len(metadata) != n:
        raise CandidateIndexError(folder, "index files disagree with index.json about N")
    return CandidateIndex(embeddings, metadata.reset_index(drop=True), thumbnails, info, folder)


def with_run_score(index: CandidateIndex, run: LoadedRun) -> CandidateIndex:
    """The index scoring with the run's own score (Gated Symile's carries the run's gate)."""
    return replace(index, score=objective_score(run.objective, run.model))


def _save_npy(folder: Path, name: str, array: np.ndarray) -> None:
    with open(folder / name, "wb") as handle:
        np.save(handle, array)


def write_index(
    run: RunDir,
    embeddings: np.ndarray,
    metadata: pd.DataFrame,
    thumbnails: np.ndarray,
    info: dict[str, Any],
) -> Path:
    """Write RUN/index/ atomically: a temporary sibling folder, then renames."""
    info = {
        **info,
        "schema_version": SCHEMA_VERSION,
        "n": len(embeddings),
        "dim": int(embeddings.shape[1]),
        "thumbnail_size": int(thumbnails.shape[-1]),
    }
    with atomic_directory(run.index_dir) as tmp:
        _save_npy(tmp, EMBEDDINGS_FILE, np.ascontiguousarray(embeddings, dtype=np.float32))
        _save_npy(tmp, THUMBNAILS_FILE, np.ascontiguousarray(thumbnails, dtype=np.uint8))
        metadata.reset_index(drop=True).to_parquet(tmp / METADATA_FILE, index=False)
        # index.json last: its presence means the other files are complete.
        (tmp / INDEX_JSON).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return run.index_dir


def split_metadata(dataset: DatasetDir, split: str) -> pd.DataFrame:
    """The index's metadata of one split: position, then the manifest's METADATA_COLUMNS."""
    manifest = dataset.manifest(split)
    part = manifest[[c for c in METADATA_COLUMNS if c in manifest.columns]].copy()
    part.insert(0, "position", np.arange(len(part), dtype=np.int64))
    return part


@dataclass(frozen=True)
class IndexConfig:
    """What `symile-clinical index` builds: the run, its checkpoint, the dataset split."""

    run_dir: Path
    data_dir: Path | None = None  # default: the dataset the run was trained on
    split: str = "test"
    checkpoint: str = "best"
    batch_size: int = 64
    thumbnail_size: int = 96
    force: bool = False


def build_index(
    run: LoadedRun, dataset: DatasetDir, config: IndexConfig, progress: bool = True
) -> CandidateIndex:
    """Embed every CXR of the split with the run's model and write RUN/index/ atomically."""
    cxr = SplitArrays(dataset, config.split).cxr  # the CXRs alone: labs are not indexed
    metadata = split_metadata(dataset, config.split)
    if len(metadata) != len(cxr):
        raise CandidateIndexError(
            dataset.manifest_path,
            f"{len(metadata)} rows for {config.split}, but cxr.npy has {len(cxr)}",
        )
    log.info("indexing %d %s CXRs of %s", len(cxr), config.split, dataset.path)
    embeddings, thumbnails = embed_cxr_pool(
        run.model, cxr, config.batch_size, config.thumbnail_size, progress
    )
    info = {
        "created_by": "symile-clinical index",
        "objective": run.objective,
        "checkpoint": Path(run.checkpoint_path).name,
        "checkpoint_sha256": run.checkpoint_sha256,
        "dataset": str(dataset.path),
        "dataset_sha256": dataset.sha256(),
        "split": config.split,
    }
    write_index(run.run, embeddings, metadata, thumbnails, info)
    return with_run_score(load_index(run.run, run.checkpoint_sha256), run)


def split_query_vectors(
    run: LoadedRun, dataset: DatasetDir, split: str, limit: int = 256, batch_size: int = 64
) -> np.ndarray:
    """Query vectors (similarity.query_vector) of the first `limit` admissions of a split;
    NotInnerProductError for an objective whose score has none."""
    require_inner_product(run.objective, run.run_dir)
    arrays = dataset.split(split)
    rows = np.arange(min(limit, len(arrays)))
    ecg, labs = embed_queries(run.model, arrays, rows, batch_size)
    return query_vector(run.objective, [ecg, labs])


def ensure_index(
    run: LoadedRun, config: IndexConfig, progress: bool = True
) -> tuple[CandidateIndex, bool]:
    """The run's current index, rebuilt when missing, stale or forced; (index, rebuilt)."""
    dataset = run.run.dataset(config.data_dir)
    dataset_sha = dataset.sha256()
    if not config.force:
        try:
            index = load_index(run.run, run.checkpoint_sha256, dataset_sha)
        except StaleIndexError as error:
            log.warning("rebuilding a stale index: %s", error.reason)
        except CandidateIndexError as error:
            log.info("building the index: %s", error.reason)
        else:
            if index.info.get("split") == config.split:
                return with_run_score(index, run), False
            log.info("rebuilding: the index holds split %s", index.info.get("split"))
    return build_index(run, dataset, config, progress), True
