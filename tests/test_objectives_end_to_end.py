"""GRAM, TRIANGLE and Gated Symile end to end on a tiny planted dataset: train a few steps,
evaluate, build the index, rank a query; each objective's own score everywhere, and an
inner-product index refused for a score that is not an inner product."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from _dataset_factory import write_dataset, write_tiny_config

from app.web.queries import Query, masked_lab_queries, rank_candidates
from models import ModelConfig, build_model
from symile_clinical.cli import main
from symile_clinical.evaluation.embedding import embed_queries
from symile_clinical.evaluation.evaluate import EvaluateConfig, evaluate
from symile_clinical.formats.checkpoint import load_checkpoint
from symile_clinical.formats.run_config import OBJECTIVES, TrainConfig
from symile_clinical.formats.run_dir import RunDir, load_run
from symile_clinical.objective.gated_symile import gated_symile_scores
from symile_clinical.objective.gram import gram_scores
from symile_clinical.objective.scores import (
    SCORED_OBJECTIVES,
    labs_missing_flags,
    objective_score,
)
from symile_clinical.objective.triangle import triangle_scores
from symile_clinical.search.index import (
    CandidateIndexError,
    IndexConfig,
    NotInnerProductError,
    ensure_index,
    load_index,
    softmax_probabilities,
    split_query_vectors,
)
from symile_clinical.training.config import load_config
from symile_clinical.training.trainer import train

NEW = ["gram", "triangle", "gated-symile"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("data") / "dataset",
        n_train=32,
        n_val=12,
        n_test=12,
        ecg_samples=1000,
        missing_rate=0.5,
    )


@pytest.fixture(scope="module")
def runs(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny run per new objective: 4 steps, validated twice."""
    root = tmp_path_factory.mktemp("runs")
    trained = {}
    for objective in NEW:
        config = load_config(
            write_tiny_config(
                root / f"{objective}.toml",
                objective=objective,
                max_steps=4,
                batch_size=8,
                lab_dropout=0.3,
            )
        )
        train(config, dataset, root / objective, progress=False)
        trained[objective] = root / objective
    return trained


def test_every_objective_has_a_score_and_the_heads_follow_it() -> None:
    assert set(SCORED_OBJECTIVES) == set(OBJECTIVES)
    heads = {
        objective: (c.model.gate_dim > 0, c.model.matching_hidden > 0)
        for objective in OBJECTIVES
        for c in [TrainConfig(objective=objective)]
    }
    assert heads == {
        "symile": (False, False),
        "clip": (False, False),
        "gram": (False, True),
        "triangle": (False, False),
        "gated-symile": (True, False),
    }
    gated = TrainConfig(objective="gated-symile", model=ModelConfig(gate_dim=8))
    assert gated.model.gate_dim == 8  # a size the recipe sets is kept
    assert dataclasses.replace(gated, objective="symile").model.gate_dim == 0


@pytest.mark.parametrize("objective", NEW)
def test_trains_evaluates_indexes_and_ranks(
    objective: str, runs: dict[str, Path], dataset: Path, tmp_path: Path
) -> None:
    run = RunDir(runs[objective])
    state = load_checkpoint(run.last_checkpoint)
    assert state["progress"]["step"] == 4
    initial = build_model(run.read_config().model, seed=0).state_dict()
    heads = [k for k in state["model"] if k.startswith(("gate.", "matching_head."))]
    assert bool(heads) == (objective != "triangle")
    # The heads train with the encoders (their gradients reach them through the loss).
    assert any(not torch.equal(initial[k], state["model"][k]) for k in heads) or not heads

    loaded = load_run(run)
    assert loaded.objective == objective
    result = evaluate(
        EvaluateConfig(run_dir=run.path, n_bootstrap=50, plots=False, out_dir=tmp_path / "r")
    )
    metrics = result.metrics["runs"][0]
    assert metrics["objective"] == objective
    assert 0.0 <= metrics["candidate_top1"]["estimate"] <= 1.0
    assert len(metrics["by_observed_labs"]) == len(result.metrics["lab_bins"])
    assert ("missing_labs" in metrics) == (objective == "gated-symile")
    assert "NULL option" in result.files["markdown"].read_text() or objective != "gated-symile"

    index, rebuilt = ensure_index(loaded, IndexConfig(run_dir=run.path, split="test"))
    assert rebuilt and index.objective == objective and not index.is_inner_product
    arrays = run.dataset().split("test")
    ecg, labs = embed_queries(loaded.model, arrays, np.arange(3))
    observed = np.asarray(arrays.labs_observed[0])
    ranking = rank_candidates(
        index, objective, 2.0, ecg[0], labs[0], k=3, true_position=0, observed=observed
    )
    # The ranking's scores are the objective's own score of each candidate (a query with no
    # observed lab flagged labs-missing, as evaluation flags it).
    flags = labs_missing_flags(torch.tensor([observed.sum() == 0]))
    own = objective_score(objective, loaded.model)(
        torch.from_numpy(index.embeddings),
        [torch.from_numpy(ecg[:1]), torch.from_numpy(labs[:1])],
        flags,
    )[0].numpy()
    np.testing.assert_allclose(ranking.scores, np.sort(own)[::-1][:3], rtol=1e-5, atol=1e-6)
    assert ranking.true_rank == 1 + int((own > own[0]).sum())
    # Its probabilities: the softmax of the objective's own scores over the whole pool.
    expected = softmax_probabilities(own, 2.0)
    np.testing.assert_allclose(
        ranking.probabilities, expected[ranking.positions], rtol=1e-5, atol=1e-7
    )
    assert ranking.true_probability == pytest.approx(float(expected[0]), rel=1e-5, abs=1e-7)
    # search() with the query embeddings: exact, the same top-k.
    found = index.search([ecg, labs], k=3)
    np.testing.assert_array_equal(found.positions[0], ranking.positions)
    within = index.search([ecg, labs], k=2, within=np.array([[2, 0, 1]] * 3))
    assert set(within.positions[0]) <= {0, 1, 2}
    # The app's lab effects: masking each observed lab, scored by the objective's score.
    row = int(np.flatnonzero(np.asarray(arrays.labs_observed).sum(axis=1) > 0)[0])
    query = Query(arrays.ecg[row], arrays.labs[row], arrays.labs_observed[row])
    masked = masked_lab_queries(loaded.model, objective, query, fill=run.dataset().fill_values)
    assert masked.vectors is None
    assert masked.candidate_scores(index.embeddings[0]).shape == (len(masked.observed_idx) + 1,)

    # An inner-product index or query vector is refused with a typed error, never approximated.
    with pytest.raises(NotInnerProductError, match="not an inner product"):
        split_query_vectors(loaded, run.dataset(), "test")
    with pytest.raises(NotInnerProductError):
        index.search(ecg * labs, k=3)
    with pytest.raises(NotInnerProductError):
        index.rank(ecg[0] * labs[0], 3, 1.0)


def test_index_command_refuses_faiss_for_a_non_inner_product_score(
    runs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("faiss")
    status = main(["index", "--run", str(runs["gram"]), "--faiss-check", "flat"])
    assert status == 1
    assert "not an inner product" in caplog.text


def test_gated_index_without_its_gate_says_so(runs: dict[str, Path]) -> None:
    loaded = load_run(runs["gated-symile"])
    ensure_index(loaded, IndexConfig(run_dir=loaded.run_dir, split="test"))
    bare = load_index(loaded.run)  # opened without the run's model
    with pytest.raises(CandidateIndexError, match="gate"):
        bare.rank([bare.embeddings[0], bare.embeddings[1]], 3, 1.0)


def test_the_app_takes_gated_symiles_null_option_for_a_query_without_labs(
    runs: dict[str, Path],
) -> None:
    """As evaluation: a query with no observed lab is flagged labs-missing (the NULL option),
    one with any observed lab is not; ranking and lab effects alike."""
    loaded = load_run(runs["gated-symile"])
    index, _ = ensure_index(loaded, IndexConfig(run_dir=loaded.run_dir, split="test"))
    arrays = loaded.run.dataset().split("test")
    ecg, labs = embed_queries(loaded.model, arrays, np.arange(1))
    pool = torch.from_numpy(index.embeddings)
    rows = [torch.from_numpy(ecg), torch.from_numpy(labs)]
    score = objective_score("gated-symile", loaded.model)
    null = score(pool, rows, labs_missing_flags(torch.tensor([True])))[0].numpy()
    plain = score(pool, rows)[0].numpy()
    assert not np.allclose(null, plain)  # the flag changes the score
    n = len(index)
    for observed, want in (
        (np.zeros(arrays.labs.shape[1]), null),
        (np.eye(1, arrays.labs.shape[1])[0], plain),
    ):
        ranking = rank_candidates(
            index, "gated-symile", 2.0, ecg[0], labs[0], k=n, observed=observed
        )
        np.testing.assert_allclose(ranking.scores, want[ranking.positions], rtol=1e-5, atol=1e-6)
    # Lab effects: masking a query's only lab leaves a row with no lab, flagged too.
    query = Query(arrays.ecg[0], arrays.labs[0], np.eye(1, arrays.labs.shape[1])[0])
    masked = masked_lab_queries(loaded.model, "gated-symile", query)
    np.testing.assert_array_equal(masked.labs_missing, [False, True])
    row = [torch.from_numpy(masked.ecg[1:]), torch.from_numpy(masked.labs[1:])]
    alone = score(pool[:1], row, labs_missing_flags(torch.tensor([True])))[0, 0]
    assert masked.candidate_scores(index.embeddings[0])[1] == pytest.approx(float(alone), abs=1e-5)


def test_scores_are_the_modules_own(runs: dict[str, Path]) -> None:
    g = torch.Generator().manual_seed(0)
    pool, e, lab = (torch.randn(n, 16, generator=g) for n in (5, 3, 3))
    torch.testing.assert_close(objective_score("gram")(pool, [e, lab]), gram_scores(pool, [e, lab]))
    torch.testing.assert_close(
        objective_score("triangle")(pool, [e, lab]), triangle_scores(pool, [e, lab])
    )
    model = load_run(runs["gated-symile"]).model
    flags = torch.tensor([[False, True], [False, False], [False, True]])
    with torch.no_grad():
        want = gated_symile_scores(pool, [e, lab], model.gate([e, lab, pool]), flags)
    torch.testing.assert_close(objective_score("gated-symile", model)(pool, [e, lab], flags), want)
    with pytest.raises(ValueError, match="gate"):
        objective_score("gated-symile")


def test_gated_null_option_flags_only_queries_without_labs(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    result = evaluate(
        EvaluateConfig(
            run_dir=runs["gated-symile"], n_bootstrap=50, plots=False, out_dir=tmp_path / "r"
        )
    )
    run = result.metrics["runs"][0]
    ways = run["missing_labs"]
    # As trained: a query with no observed lab takes the NULL option; the main table is it.
    assert ways["null_option"]["by_observed_labs"] == run["by_observed_labs"]
    # The observed-mask ECG-only query is the one every objective reports.
    assert ways["observed_mask"]["ecg_only"]["candidate_top1"] == run["ecg_only"]["candidate_top1"]
    # Bins with observed labs are the same either way: flags only touch zero-lab queries.
    for mask_bin, null_bin in zip(
        ways["observed_mask"]["by_observed_labs"][1:],
        ways["null_option"]["by_observed_labs"][1:],
        strict=True,
    ):
        if mask_bin["low"] > 0:
            assert mask_bin == null_bin


def test_cli_trains_a_new_objective_from_a_preset_override(dataset: Path, tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path / "c.toml", max_steps=2, batch_size=8)
    out = tmp_path / "run"
    arguments = ["--data", str(dataset), "--out", str(out), "--config", str(config)]
    status = main(["train", *arguments, "--objective", "triangle", "--no-progress"])
    assert status == 0
    assert RunDir(out).read_config().objective == "triangle"
