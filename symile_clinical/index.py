"""The candidate index: a pool of chest X-rays embedded once, searched by inner product.

Symile scores a triple by the multilinear inner product, MIP(e, l, c) = <e * l, c>, so for a
query (ECG embedding e, labs embedding l) the whole pool is ranked by one matrix product
with the query vector q = e * l. Pairwise CLIP scores a candidate by the sum of its dot
products with each query modality, <e, c> + <l, c> = <e + l, c>, so its query vector is
q = e + l (the same scores as symile_clinical.similarity). Exact search by matrix product is the
default; an optional faiss backend (flat inner product, or HNSW with the norm-augmentation
trick, since LayerNorm embeddings are not unit vectors) serves pools of millions and
reports its recall against exact search.

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
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from symile_clinical.checkpoint import file_sha256
from symile_clinical.data import SplitArrays

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
INDEX_DIRNAME = "index"
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

Objective = Literal["symile", "clip"]


class CandidateIndexError(Exception):
    """An index folder that cannot be used, with the path and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class StaleIndexError(CandidateIndexError):
    """The index was built from another checkpoint or dataset than the one asked for."""


class EmbeddingModel(Protocol):
    """What the index needs of models.SymileModel."""

    def encode_cxr(self, cxr: Any) -> Any:
        """[B, 1, S, S] float32 in [0, 1] -> [B, d]."""
        ...


class LoadedRunLike(Protocol):
    """What the index needs of symile_clinical.runs.LoadedRun."""

    model: Any
    objective: str
    run_dir: Path
    checkpoint_path: Path
    checkpoint_sha256: str
    data_dir: Path | None


@dataclass(frozen=True)
class SearchResult:
    """Top-k of each query: positions in the index and their scores, best first."""

    positions: np.ndarray  # int64 [B, k]
    scores: np.ndarray  # float32 [B, k]


# ---------------------------------------------------------------------------------------
# Queries and exact search (pure numpy)


def query_vectors(ecg_emb: np.ndarray, labs_emb: np.ndarray, objective: str) -> np.ndarray:
    """The vector each candidate is dotted with: e * l for Symile, e + l for CLIP; [B, d]."""
    ecg_emb = np.asarray(ecg_emb, dtype=np.float32)
    labs_emb = np.asarray(labs_emb, dtype=np.float32)
    if objective == "symile":
        return ecg_emb * labs_emb
    if objective == "clip":
        return ecg_emb + labs_emb
    raise ValueError(f"unknown objective {objective!r}: expected 'symile' or 'clip'")


def top_k_sorted(scores: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Top-k of one query's scores [P] over positions [P]: (positions [k], scores [k]), best
    first; ties go to the lower position."""
    if len(scores) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        # argpartition may cut inside a run of tied scores: take every tie of the k-th value.
        kth = scores[keep].min()
        keep = np.flatnonzero(scores >= kth)
        scores, positions = scores[keep], positions[keep]
    order = np.lexsort((positions, -scores))[:k]
    return positions[order], scores[order]


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
            pool_scores = embeddings[within[b]] @ queries[b]
            positions[b], scores[b] = top_k_sorted(pool_scores, within[b], k)
        return SearchResult(positions, scores)

    n = len(embeddings)
    k = min(k, n)
    best_pos = np.zeros((n_queries, 0), np.int64)
    best_scores = np.zeros((n_queries, 0), np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(embeddings[start : start + chunk], dtype=np.float32)
        block_scores = queries @ block.T  # [B, chunk]
        block_pos = np.arange(start, start + len(block), dtype=np.int64)
        merged_pos = np.empty((n_queries, min(k, best_pos.shape[1] + len(block))), np.int64)
        merged_scores = np.empty(merged_pos.shape, np.float32)
        for b in range(n_queries):
            cand_scores = np.concatenate([best_scores[b], block_scores[b]])
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


class FaissSearcher:
    """Inner-product search with faiss: 'flat' (exact) or 'hnsw' (approximate).

    HNSW searches by L2 distance, which ranks by inner product only for unit vectors. The
    norm-augmentation trick (Bachrach et al. 2014) makes it exact in ranking for any
    vectors: each candidate c gets an extra coordinate sqrt(M^2 - |c|^2) (M the largest
    norm) and each query a 0, so |q' - c'|^2 = |q|^2 + M^2 - 2 <q, c>.
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        kind: Literal["flat", "hnsw"] = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 256,
    ) -> None:
        import faiss

        self.kind = kind
        base = np.ascontiguousarray(embeddings, dtype=np.float32)
        dim = base.shape[1]
        if kind == "flat":
            self._index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            norms_sq = np.einsum("nd,nd->n", base, base)
            extra = np.sqrt(np.maximum(norms_sq.max() - norms_sq, 0.0)).astype(np.float32)
            base = np.ascontiguousarray(np.concatenate([base, extra[:, None]], axis=1))
            self._index = faiss.IndexHNSWFlat(dim + 1, hnsw_m)
            self._index.hnsw.efConstruction = ef_construction
            self._index.hnsw.efSearch = ef_search
        else:
            raise ValueError(f"unknown faiss index kind {kind!r}: expected 'flat' or 'hnsw'")
        self._index.add(base)

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k positions and inner-product scores for queries [B, d]."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n_queries = len(queries)
        k = min(k, self._index.ntotal)
        if self.kind == "hnsw":
            padded = np.zeros((n_queries, queries.shape[1] + 1), np.float32)
            padded[:, :-1] = queries
            _, positions = self._index.search(padded, k)
            base = self._index.reconstruct_batch(positions.clip(0).ravel())[:, :-1]
            scores = np.einsum("bkd,bd->bk", base.reshape(n_queries, k, -1), queries)
        else:
            scores, positions = self._index.search(queries, k)
        return SearchResult(positions.astype(np.int64), scores.astype(np.float32))


def faiss_recall(
    embeddings: np.ndarray, queries: np.ndarray, kind: Literal["flat", "hnsw"], k: int = 10
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

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def objective(self) -> str:
        """'symile' or 'clip': how queries are formed."""
        return str(self.info["objective"])

    @property
    def ids(self) -> np.ndarray:
        """dicom_id of each position; [N] object."""
        return self.metadata["dicom_id"].to_numpy()

    def positions_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Index positions of split rows (the same numbers when the whole split is indexed)."""
        lookup = pd.Series(self.metadata.index.to_numpy(), index=self.metadata["row"].to_numpy())
        return lookup.loc[np.asarray(rows)].to_numpy(dtype=np.int64)

    def search(
        self,
        query_embeddings: np.ndarray,
        k: int,
        within: np.ndarray | None = None,
        searcher: FaissSearcher | None = None,
    ) -> SearchResult:
        """Top-k positions and scores for query vectors [B, d] (see `query_vectors`).

        Exact matrix product by default; `searcher` (a FaissSearcher over these embeddings)
        for large pools; `within` [B, K] restricts each query to a candidate pool.
        """
        if searcher is not None and within is None:
            return searcher.search(query_embeddings, k)
        return exact_search(self.embeddings, query_embeddings, k, within)


def index_dir(run_dir: Path | str) -> Path:
    """Where a run keeps its index."""
    return Path(run_dir) / INDEX_DIRNAME


def read_index_info(run_dir: Path | str) -> dict[str, Any]:
    """The index.json of a run's index; CandidateIndexError when absent or unreadable."""
    path = index_dir(run_dir) / INDEX_JSON
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
    run_dir: Path | str,
    checkpoint_sha256: str | None = None,
    dataset_sha256: str | None = None,
) -> CandidateIndex:
    """Open RUN/index/; refuse (StaleIndexError) an index of another checkpoint or dataset."""
    folder = index_dir(run_dir)
    info = read_index_info(run_dir)
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


def _thumbnails(cxr: Any, size: int) -> np.ndarray:
    """[B, 1, S, S] float tensor in [0, 1] -> uint8 [B, T, T] by area averaging."""
    import torch
    import torch.nn.functional as F

    if cxr.shape[-1] > size:
        cxr = F.interpolate(cxr, size=(size, size), mode="area")
    return (cxr[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def embed_cxr_split(
    model: EmbeddingModel,
    cxr: np.ndarray,  # uint8 [N, 1, S, S] (or float16 in [0, 1])
    batch_size: int = 64,
    thumbnail_size: int = 96,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed uint8 CXRs [N, 1, S, S] -> (float32 [N, d] embeddings, uint8 [N, T, T] thumbs)."""
    import torch
    from tqdm.auto import tqdm

    embeddings, thumbs = [], []
    starts = range(0, len(cxr), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="index", unit="batch", disable=not progress):
            pixels = np.array(cxr[start : start + batch_size])
            batch = torch.from_numpy(pixels).to(torch.float32)
            if pixels.dtype == np.uint8:  # uint8 0..255; float16 datasets are already in [0, 1]
                batch = batch / 255.0
            embeddings.append(model.encode_cxr(batch).float().cpu().numpy())
            thumbs.append(_thumbnails(batch, thumbnail_size))
    if not embeddings:
        raise ValueError("no candidate CXRs to index")
    return np.concatenate(embeddings), np.concatenate(thumbs)


def _save_npy(folder: Path, name: str, array: np.ndarray) -> None:
    with open(folder / name, "wb") as handle:
        np.save(handle, array)


def write_index(
    run_dir: Path | str,
    embeddings: np.ndarray,
    metadata: pd.DataFrame,
    thumbnails: np.ndarray,
    info: dict[str, Any],
) -> Path:
    """Write RUN/index/ atomically: a temporary sibling folder, then renames."""
    run_dir = Path(run_dir)
    target = index_dir(run_dir)
    info = {
        **info,
        "schema_version": SCHEMA_VERSION,
        "n": len(embeddings),
        "dim": int(embeddings.shape[1]),
        "thumbnail_size": int(thumbnails.shape[-1]),
    }
    tmp = Path(tempfile.mkdtemp(prefix=".index.tmp-", dir=run_dir))
    try:
        _save_npy(tmp, EMBEDDINGS_FILE, np.ascontiguousarray(embeddings, dtype=np.float32))
        _save_npy(tmp, THUMBNAILS_FILE, np.ascontiguousarray(thumbnails, dtype=np.uint8))
        metadata.reset_index(drop=True).to_parquet(tmp / METADATA_FILE, index=False)
        # index.json last: its presence means the other files are complete.
        (tmp / INDEX_JSON).write_text(json.dumps(info, indent=2, default=str) + "\n")
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".index.old-", dir=run_dir))
            os.replace(target, old / INDEX_DIRNAME)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def split_metadata(dataset_dir: Path | str, split: str) -> pd.DataFrame:
    """Manifest rows of one split ordered by row, with the columns the index keeps."""
    manifest = pd.read_parquet(Path(dataset_dir) / "manifest.parquet")
    part = manifest[manifest["split"] == split].sort_values("row").reset_index(drop=True)
    columns = [c for c in METADATA_COLUMNS if c in part.columns]
    part = part[columns].copy()
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


def run_dataset_dir(run: LoadedRunLike) -> Path:
    """The dataset a run was trained on (config.json's "data"): as written, else under RUN."""
    data = getattr(run, "data_dir", None)
    if data is None:
        raise CandidateIndexError(Path(run.run_dir) / "config.json", "names no dataset: pass one")
    path = Path(data)
    if path.is_absolute() or path.exists():
        return path
    return Path(run.run_dir) / path


def build_index(
    run: LoadedRunLike, data_dir: Path | str, config: IndexConfig, progress: bool = True
) -> CandidateIndex:
    """Embed every CXR of the split with the run's model and write RUN/index/ atomically."""
    data_dir = Path(data_dir)
    cxr = SplitArrays(data_dir, config.split).cxr
    metadata = split_metadata(data_dir, config.split)
    if len(metadata) != len(cxr):
        raise CandidateIndexError(
            data_dir / "manifest.parquet",
            f"{len(metadata)} rows for {config.split}, but cxr.npy has {len(cxr)}",
        )
    log.info("indexing %d %s CXRs of %s", len(cxr), config.split, data_dir)
    embeddings, thumbnails = embed_cxr_split(
        run.model, cxr, config.batch_size, config.thumbnail_size, progress
    )
    info = {
        "created_by": "symile-clinical index",
        "objective": run.objective,
        "checkpoint": Path(run.checkpoint_path).name,
        "checkpoint_sha256": run.checkpoint_sha256,
        "dataset": str(data_dir.resolve()),
        "dataset_sha256": file_sha256(data_dir / "dataset.json"),
        "split": config.split,
    }
    write_index(run.run_dir, embeddings, metadata, thumbnails, info)
    return load_index(run.run_dir, run.checkpoint_sha256)


def split_query_vectors(
    run: LoadedRunLike, data_dir: Path | str, split: str, limit: int = 256, batch_size: int = 64
) -> np.ndarray:
    """Query vectors (see `query_vectors`) of the first `limit` admissions of a split; [B, d]."""
    import torch

    arrays = SplitArrays(data_dir, split)
    rows = np.arange(min(limit, len(arrays)))
    vectors = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = arrays.batch(rows[start : start + batch_size])
            ecg = run.model.encode_ecg(batch["ecg"]).float().numpy()
            labs = run.model.encode_labs(batch["labs"], batch["labs_observed"]).float().numpy()
            vectors.append(query_vectors(ecg, labs, run.objective))
    return np.concatenate(vectors)


def ensure_index(
    run: LoadedRunLike, config: IndexConfig, progress: bool = True
) -> tuple[CandidateIndex, bool]:
    """The run's current index, rebuilt when missing, stale or forced; (index, rebuilt)."""
    data_dir = Path(config.data_dir) if config.data_dir else run_dataset_dir(run)
    dataset_sha = file_sha256(data_dir / "dataset.json")
    if not config.force:
        try:
            index = load_index(run.run_dir, run.checkpoint_sha256, dataset_sha)
        except StaleIndexError as error:
            log.warning("rebuilding a stale index: %s", error.reason)
        except CandidateIndexError as error:
            log.info("building the index: %s", error.reason)
        else:
            if index.info.get("split") == config.split:
                return index, False
            log.info("rebuilding: the index holds split %s", index.info.get("split"))
    return build_index(run, data_dir, config, progress), True
