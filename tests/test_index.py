"""The candidate index: exact search against a naive ranking, faiss recall, atomic and
stale-aware storage, and embeddings equal to the model's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from symile_clinical.formats.dataset_dir import DatasetDir
from symile_clinical.formats.run_dir import RunDir
from symile_clinical.objective.similarity import query_vector, score_fn
from symile_clinical.search.index import (
    CandidateIndex,
    CandidateIndexError,
    FaissSearcher,
    IndexConfig,
    StaleIndexError,
    build_index,
    default_nlist,
    ensure_index,
    exact_search,
    load_index,
    recall_against_exact,
    softmax_probabilities,
    write_index,
)


def naive_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int):
    """Obviously correct: score every candidate in float64, sort by (-score, position)."""
    positions, scores = [], []
    for q in queries:
        s = [float(np.dot(q.astype(np.float64), c.astype(np.float64))) for c in embeddings]
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
        positions.append(order)
        scores.append([s[i] for i in order])
    return np.array(positions), np.array(scores)


def layernorm_like(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Embeddings with unequal norms, as LayerNorm outputs with a learned gain have."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x * rng.uniform(0.5, 1.5, size=(n, 1)).astype(np.float32)


@pytest.mark.parametrize("chunk", [7, 1000])
def test_exact_search_matches_naive_ranking(chunk: int) -> None:
    rng = np.random.default_rng(0)
    embeddings = layernorm_like(rng, 300, 16)
    queries = layernorm_like(rng, 5, 16)
    result = exact_search(embeddings, queries, k=10, chunk=chunk)
    positions, scores = naive_top_k(embeddings, queries, 10)
    np.testing.assert_array_equal(result.positions, positions)
    np.testing.assert_allclose(result.scores, scores, rtol=1e-4, atol=1e-4)


def test_ties_go_to_the_lower_position_across_chunks() -> None:
    embeddings = np.ones((50, 4), np.float32)  # every candidate scores the same
    result = exact_search(embeddings, np.ones((1, 4), np.float32), k=5, chunk=8)
    np.testing.assert_array_equal(result.positions[0], [0, 1, 2, 3, 4])


def test_search_within_a_candidate_pool() -> None:
    rng = np.random.default_rng(1)
    embeddings = layernorm_like(rng, 100, 8)
    queries = layernorm_like(rng, 3, 8)
    pools = np.stack([rng.choice(100, size=10, replace=False) for _ in range(3)])
    result = exact_search(embeddings, queries, k=10, within=pools)
    for b in range(3):
        assert set(result.positions[b]) == set(pools[b])
        positions, _ = naive_top_k(embeddings[pools[b]], queries[b : b + 1], 10)
        np.testing.assert_array_equal(result.positions[b], pools[b][positions[0]])


@pytest.mark.parametrize("objective", ["symile", "clip"])
def test_query_vectors_give_the_training_scores(objective: str) -> None:
    rng = np.random.default_rng(2)
    ecg, labs, cxr = (layernorm_like(rng, n, 8) for n in (4, 4, 20))
    expected = score_fn(objective)(
        torch.from_numpy(cxr), [torch.from_numpy(ecg), torch.from_numpy(labs)]
    )
    got = query_vector(objective, [ecg, labs]) @ cxr.T
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="objective"):
        query_vector("triplet", [ecg, labs])


def test_softmax_probabilities_sum_to_one_and_follow_scores() -> None:
    probs = softmax_probabilities(np.array([[1.0, 2.0, 3.0]]), logit_scale=14.3)
    assert probs.sum() == pytest.approx(1.0)
    assert probs[0, 2] > probs[0, 1] > probs[0, 0]


@pytest.mark.parametrize("pool", [None, np.array([50, 7, 3, 12, 40, 1, 33])])
def test_rank_agrees_with_search_softmax_and_a_naive_rank(pool: np.ndarray | None) -> None:
    """One query over a pool: the same top-k as search (ties to the lower position), the
    pool's softmax probabilities, and the true candidate's rank counted the slow way."""
    rng = np.random.default_rng(7)
    embeddings = layernorm_like(rng, 60, 8)
    embeddings[7] = embeddings[3]  # a tie: position 3 ranks ahead of 7
    index = CandidateIndex(embeddings, pd.DataFrame({"row": range(60)}), np.zeros((60, 2, 2)), {})
    query = layernorm_like(rng, 1, 8)[0]
    positions = np.arange(60) if pool is None else pool
    ranking = index.rank(query, k=5, logit_scale=7.0, pool=pool, true_position=7)
    searched = index.search(query[None], 5, within=None if pool is None else pool[None])
    np.testing.assert_array_equal(ranking.positions, searched.positions[0])
    np.testing.assert_allclose(ranking.scores, searched.scores[0], rtol=1e-6)
    probabilities = softmax_probabilities(embeddings[positions] @ query, 7.0)
    where = [int(np.flatnonzero(positions == p)[0]) for p in ranking.positions]
    np.testing.assert_allclose(ranking.probabilities, probabilities[where], rtol=1e-5)
    order = sorted(positions.tolist(), key=lambda p: (-float(embeddings[p] @ query), p))
    assert ranking.true_rank == order.index(7) + 1 and order.index(3) < order.index(7)
    assert ranking.true_probability == pytest.approx(probabilities[positions == 7][0], rel=1e-5)
    assert ranking.pool_size == len(positions)
    absent = index.rank(query, k=5, logit_scale=7.0, pool=np.array([1, 2]), true_position=7)
    assert absent.true_rank is None and len(absent.positions) == 2


def test_faiss_flat_equals_exact_and_hnsw_recall_is_reported() -> None:
    rng = np.random.default_rng(3)
    embeddings = layernorm_like(rng, 3000, 24)
    queries = layernorm_like(rng, 40, 24) * layernorm_like(rng, 40, 24)  # Symile queries
    exact = exact_search(embeddings, queries, k=10)
    flat = FaissSearcher(embeddings, "flat").search(queries, 10)
    assert recall_against_exact(flat, exact) == 1.0
    np.testing.assert_allclose(flat.scores, exact.scores, rtol=1e-4, atol=1e-4)
    # The graph searches by inner product; random Gaussian vectors are its hardest case,
    # so recall rises with efSearch.
    recalls = [
        recall_against_exact(
            FaissSearcher(embeddings, "hnsw", ef_search=ef).search(queries, 10), exact
        )
        for ef in (8, 512)
    ]
    assert recalls[0] < recalls[1] and recalls[1] >= 0.9
    hnsw = FaissSearcher(embeddings, "hnsw", ef_search=512).search(queries, 10)
    # Scores are the true inner products of whatever HNSW returned, best first.
    rescored = np.einsum("bkd,bd->bk", embeddings[hnsw.positions], queries)
    np.testing.assert_allclose(hnsw.scores, rescored, rtol=1e-4, atol=1e-4)
    assert (np.diff(hnsw.scores, axis=1) <= 1e-6).all()


def test_ivf_recall_rises_with_nprobe_and_scanning_every_list_is_exact() -> None:
    rng = np.random.default_rng(4)
    embeddings = layernorm_like(rng, 4000, 16)
    queries = layernorm_like(rng, 30, 16) * layernorm_like(rng, 30, 16)
    exact = exact_search(embeddings, queries, k=10)
    ivf = FaissSearcher(embeddings, "ivf", nlist=64, nprobe=1)
    one = recall_against_exact(ivf.search(queries, 10), exact)
    ivf.set_effort(64)  # every list: an exhaustive scan
    every = ivf.search(queries, 10)
    assert one < 1.0 and recall_against_exact(every, exact) == 1.0
    np.testing.assert_allclose(every.scores, exact.scores, rtol=1e-4, atol=1e-4)
    assert ivf.effort == 64
    ivf.set_effort(10_000)
    assert ivf.effort == 64  # capped at nlist


def test_tune_reaches_the_target_recall_on_held_out_queries() -> None:
    rng = np.random.default_rng(5)
    # Clustered candidates, as real embeddings are: far easier than isotropic noise.
    centres = layernorm_like(rng, 40, 16)
    embeddings = centres[rng.integers(0, 40, 6000)] + 0.3 * rng.standard_normal((6000, 16))
    embeddings = embeddings.astype(np.float32)
    tune_q, test_q = (
        (centres[rng.integers(0, 40, 200)] + 0.3 * rng.standard_normal((200, 16))).astype(
            np.float32
        )
        for _ in range(2)
    )
    for kind in ("ivf", "hnsw"):
        searcher = FaissSearcher(embeddings, kind, ef_search=8, nprobe=1)
        setting, recall = searcher.tune(tune_q, exact_search(embeddings, tune_q, 10), 0.95)
        assert recall >= 0.95 and searcher.effort == setting
        # Held-out queries at the tuned setting: the recall carries over (within noise).
        held_out = recall_against_exact(
            searcher.search(test_q, 10), exact_search(embeddings, test_q, 10)
        )
        assert held_out >= 0.9, (kind, setting, held_out)


def test_default_nlist_follows_the_pool() -> None:
    assert default_nlist(1_000_000) == 4000
    assert default_nlist(10) == 1
    assert 1 <= default_nlist(5000) <= 5000 // 39


# ---------------------------------------------------------------------------------------
# On disk


def small_index_parts(n: int = 12, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    embeddings = layernorm_like(rng, n, d)
    metadata = pd.DataFrame(
        {
            "position": np.arange(n),
            "row": np.arange(n),
            "subject_id": 10_000_000 + np.arange(n),
            "dicom_id": [f"dcm{i:04d}" for i in range(n)],
        }
    )
    thumbs = rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    return embeddings, metadata, thumbs


def write_small_index(folder: Path, objective: str = "symile", checkpoint_sha256: str = "a"):
    """small_index_parts written as FOLDER/index; returns (embeddings, metadata, thumbs, path)."""
    embeddings, metadata, thumbs = small_index_parts()
    info = {"objective": objective, "checkpoint_sha256": checkpoint_sha256}
    path = write_index(RunDir(folder), embeddings, metadata, thumbs, info)
    return embeddings, metadata, thumbs, path


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    embeddings, metadata, thumbs, _ = write_small_index(tmp_path, checkpoint_sha256="a" * 64)
    index = load_index(tmp_path, checkpoint_sha256="a" * 64)
    np.testing.assert_array_equal(index.embeddings, embeddings)
    np.testing.assert_array_equal(index.thumbnails, thumbs)
    assert list(index.ids) == list(metadata["dicom_id"])
    assert index.objective == "symile"
    assert index.info["n"] == 12 and index.info["dim"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporary folders left


def test_an_index_of_another_checkpoint_is_refused(tmp_path: Path) -> None:
    write_small_index(tmp_path, checkpoint_sha256="a" * 64)
    with pytest.raises(StaleIndexError, match="checkpoint"):
        load_index(tmp_path, checkpoint_sha256="b" * 64)


def test_missing_or_truncated_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CandidateIndexError, match="no index"):
        load_index(tmp_path)
    *_, folder = write_small_index(tmp_path, objective="clip")
    (folder / "embeddings.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CandidateIndexError, match="unreadable"):
        load_index(tmp_path)


def test_a_failed_rewrite_leaves_the_previous_index(tmp_path: Path) -> None:
    embeddings, metadata, thumbs, _ = write_small_index(tmp_path)
    bad = metadata.assign(dicom_id=[1, "x"] * 6)  # mixed types: parquet refuses the column
    with pytest.raises(Exception):  # noqa: B017 (pyarrow's own error type)
        write_index(
            RunDir(tmp_path),
            embeddings * 2,
            bad,
            thumbs,
            {"objective": "symile", "checkpoint_sha256": "b"},
        )
    index = load_index(tmp_path, checkpoint_sha256="a")
    np.testing.assert_array_equal(index.embeddings, embeddings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


# ---------------------------------------------------------------------------------------
# Building from a dataset split with a model


class PooledCxrModel(torch.nn.Module):
    """A real (tiny) CXR encoder: 4x4 average pooling, then a linear projection."""

    def __init__(self, dim: int = 5) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Linear(16, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 16, generator=generator))

    def encode_cxr(self, cxr: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(cxr, 4).flatten(1))


@dataclass
class TinyRun:
    """What the index needs of a LoadedRun, around the tiny model."""

    model: PooledCxrModel
    objective: str
    run: RunDir
    checkpoint_path: Path
    checkpoint_sha256: str

    @property
    def run_dir(self) -> Path:
        return self.run.path


def write_tiny_dataset(root: Path, n: int = 9, size: int = 32) -> Path:
    rng = np.random.default_rng(5)
    (root / "test").mkdir(parents=True)
    np.save(root / "test" / "cxr.npy", rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8))
    np.save(root / "test" / "ecg.npy", np.zeros((n, 12, 50), np.float16))
    np.save(root / "test" / "labs.npy", np.zeros((n, 3), np.float32))
    np.save(root / "test" / "labs_observed.npy", np.ones((n, 3), np.uint8))
    pd.DataFrame(
        {
            "split": "test",
            "row": np.arange(n)[::-1].copy(),  # manifest order need not be row order
            "subject_id": 100 + np.arange(n),
            "hadm_id": 200 + np.arange(n),
            "dicom_id": [f"d{i}" for i in range(n)],
        }
    ).to_parquet(root / "manifest.parquet")
    (root / "dataset.json").write_text(json.dumps({"schema_version": 1}))
    return root


def test_build_index_embeds_each_cxr_as_the_model_does(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    run = TinyRun(
        PooledCxrModel(), "symile", RunDir(tmp_path / "run"), tmp_path / "best.pt", "c" * 64
    )
    run.run_dir.mkdir()
    config = IndexConfig(run_dir=run.run_dir, data_dir=data, batch_size=4, thumbnail_size=16)
    index = build_index(run, DatasetDir(data), config, progress=False)
    cxr = np.load(data / "test" / "cxr.npy")
    with torch.no_grad():
        expected = run.model.encode_cxr(torch.from_numpy(cxr).float() / 255).numpy()
    np.testing.assert_allclose(index.embeddings, expected, rtol=1e-5, atol=1e-5)
    assert index.thumbnails.shape == (9, 16, 16) and index.thumbnails.dtype == np.uint8
    np.testing.assert_array_equal(index.metadata["row"], np.arange(9))
    assert index.metadata.loc[0, "dicom_id"] == "d8"  # row 0 is the manifest's last line
    np.testing.assert_array_equal(index.positions_of_rows(np.array([3, 1])), [3, 1])


def test_ensure_index_keeps_a_current_index_and_rebuilds_a_stale_one(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    run = TinyRun(
        PooledCxrModel(), "symile", RunDir(tmp_path / "run"), tmp_path / "best.pt", "c" * 64
    )
    run.run_dir.mkdir()
    config = IndexConfig(run_dir=run.run_dir, data_dir=data, thumbnail_size=16)
    _, rebuilt = ensure_index(run, config, progress=False)
    assert rebuilt
    _, rebuilt = ensure_index(run, config, progress=False)
    assert not rebuilt
    run.checkpoint_sha256 = "d" * 64  # a newer checkpoint
    index, rebuilt = ensure_index(run, config, progress=False)
    assert rebuilt and index.info["checkpoint_sha256"] == "d" * 64
    (data / "dataset.json").write_text(json.dumps({"schema_version": 1, "seed": 1}))
    _, rebuilt = ensure_index(run, config, progress=False)
    assert rebuilt


def test_index_command_builds_then_keeps_a_current_index(tmp_path: Path, caplog) -> None:
    from _app_run import make_runs

    from symile_clinical.cli import main

    _, run, _ = make_runs(tmp_path, n_test=6)
    assert main(["index", "--run", str(run), "--thumbnail-size", "16"]) == 0
    info = json.loads((run / "index" / "index.json").read_text())
    assert info["n"] == 6 and info["split"] == "test" and info["objective"] == "symile"
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["index", "--run", str(run)]) == 0
    assert "current" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["index", "--run", str(run), "--faiss-check", "flat"]) == 0
    assert "faiss flat: recall@6 1.000" in caplog.text  # k capped at the pool of 6
    assert main(["index", "--run", str(tmp_path / "missing")]) == 1


def test_index_command_faiss_check_takes_every_faiss_kind(tmp_path: Path, caplog) -> None:
    import typing

    from _app_run import make_runs

    from symile_clinical.cli import main
    from symile_clinical.commands.index import FAISS_CHECK_KINDS
    from symile_clinical.search.index import FaissKind

    assert typing.get_args(FaissKind) == FAISS_CHECK_KINDS  # the CLI offers every kind
    _, run, _ = make_runs(tmp_path, n_test=6)
    for kind in FAISS_CHECK_KINDS:
        caplog.clear()
        with caplog.at_level("INFO"):
            assert main(["index", "--run", str(run), "--faiss-check", kind]) == 0
        assert f"faiss {kind}: recall@6 " in caplog.text
    # IVF over 6 candidates has one list (default_nlist), which every query scans: exact.
    assert "faiss ivf: recall@6 1.000" in caplog.text
    with pytest.raises(SystemExit) as refused:
        main(["index", "--run", str(run), "--faiss-check", "pq"])
    assert refused.value.code == 2
