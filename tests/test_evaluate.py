"""`evaluate` on real dataset and run directories: chance for an untrained model, metrics
against loops, the masked-labs query, comparisons, and the report files."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _dataset_factory import write_dataset, write_tiny_config

from models import build_model
from symile_clinical.cli import main
from symile_clinical.evaluation.evaluate import (
    EvaluateConfig,
    EvaluationError,
    embed_for_evaluation,
    evaluate,
    lab_count_bins,
)
from symile_clinical.evaluation.retrieval import rank_queries
from symile_clinical.formats.checkpoint import save_checkpoint
from symile_clinical.formats.dataset_dir import CandidateSets, DatasetDir, SplitArrays
from symile_clinical.formats.run_dir import RunDir, load_run
from symile_clinical.training.config import load_config
from symile_clinical.training.trainer import fit_model_to_data, train

PNG = b"\x89PNG\r\n\x1a\n"


def save_untrained_run(run_dir: Path, dataset: Path, objective: str, seed: int) -> Path:
    """A run directory holding a freshly initialised model in the trainer's formats."""
    toml = write_tiny_config(run_dir.parent / f"{run_dir.name}.toml", objective=objective)
    config = fit_model_to_data(load_config(toml), SplitArrays(dataset, "train"))
    run = RunDir(run_dir)
    run.write_config(config, DatasetDir(dataset))
    model = build_model(config.model, seed=seed)
    save_checkpoint(run.best_checkpoint, {"format": 1, "model": model.state_dict()})
    return run_dir


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models: on a shared 2-core machine OpenMP's spinning threads only slow them down."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def unrelated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 test queries, 10 candidates each, and no relation between the modalities."""
    root = tmp_path_factory.mktemp("unrelated")
    return write_dataset(
        root / "dataset",
        n_train=16,
        n_val=16,
        n_test=300,
        n_candidates=10,
        ecg_samples=1000,
        n_classes=1,
        n_labs=12,
        missing_rate=0.4,
    )


@pytest.fixture(scope="module")
def untrained_runs(unrelated: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "symile": save_untrained_run(root / "symile", unrelated, "symile", seed=0),
        "clip": save_untrained_run(root / "clip", unrelated, "clip", seed=1),
    }


@pytest.fixture(scope="module")
def report(untrained_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI's report for the Symile run compared with the CLIP run."""
    out = tmp_path_factory.mktemp("report")
    status = main(
        [
            "evaluate",
            "--run",
            str(untrained_runs["symile"]),
            "--compare",
            str(untrained_runs["clip"]),
            "--bootstrap",
            "500",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    return out


def test_an_untrained_model_scores_at_chance_within_its_ci(report: Path) -> None:
    """On data with no cross-modal relation any score above chance would be a leak in the
    evaluation (the query's own CXR singled out, tie-breaking bias, rows misaligned).

    The planted dataset is not used here: there a random network's features already depend
    on the class, so one init can land off chance by luck (measured: 2 of 10 seeded inits
    fell just below 0.1); with no relation every init must land on it.
    """
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["chance_top1"] == 0.1 and metrics["n_queries"] == 300
    for run in metrics["runs"]:
        for estimate in (run["candidate_top1"], run["ecg_only"]["candidate_top1"]):
            assert estimate["ci_low"] <= 0.1 <= estimate["ci_high"], run["name"]
            assert estimate["ci_high"] - estimate["ci_low"] < 0.09  # 300 queries: a real CI
        recall10 = run["pool"]["recall@10"]
        assert recall10["ci_low"] <= 10 / 300 <= recall10["ci_high"]
        assert 100 < run["pool"]["median_rank"] < 200  # ~150 of 300 at chance
        assert sum(run["candidate_rank_counts"]) == 300
    comparison = metrics["comparisons"][0]
    assert (comparison["a"], comparison["b"]) == ("symile", "clip")
    assert not comparison["candidate_top1"]["significant"]


def test_report_files_are_complete_and_self_contained(report: Path) -> None:
    for name in ("accuracy_ci", "accuracy_by_observed_labs", "rank_histogram", "example_queries"):
        assert (report / f"{name}.png").read_bytes()[:8] == PNG
    html = (report / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4 and all(base64.b64decode(i)[:8] == PNG for i in images)
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing fetched from elsewhere
    markdown = (report / "report.md").read_text()
    assert "| metric | symile | clip |" in markdown
    assert "no winner is claimed" in markdown
    assert "top-1 among 10" in markdown and "chance top-1 = 10.0%" in markdown


def test_ranks_match_a_loop_over_queries(unrelated: Path) -> None:
    arrays = SplitArrays(unrelated, "test")
    sets = DatasetDir(unrelated).candidates("test")
    rng = np.random.default_rng(0)
    ecg, labs, cxr = (rng.normal(size=(len(arrays), 8)).astype(np.float32) for _ in range(3))
    for objective in ("symile", "clip"):
        fast = rank_queries(objective, ecg, labs, cxr, sets, seed=0, chunk=7)
        for q, row in enumerate(sets.query_rows[:60]):  # 60 queries x 300 CXRs in Python
            if objective == "symile":  # MIP: sum_i e_i l_i c_i
                pool = [
                    float(sum(ecg[row, i] * labs[row, i] * cxr[c, i] for i in range(8)))
                    for c in range(len(arrays))
                ]
            else:  # CLIP: <e, c> + <l, c>
                pool = [
                    float(sum(ecg[row, i] * cxr[c, i] + labs[row, i] * cxr[c, i] for i in range(8)))
                    for c in range(len(arrays))
                ]
            assert fast.pool_ranks[q] == 1 + sum(s > pool[row] + 1e-4 for s in pool)
            own = [pool[c] for c in sets.candidate_rows[q]]
            assert fast.candidate_ranks[q] == 1 + sum(s > pool[row] + 1e-4 for s in own)


def test_an_oracle_retrieves_everything() -> None:
    rng = np.random.default_rng(1)
    ecg = rng.normal(size=(40, 16)).astype(np.float32)
    ecg /= np.linalg.norm(ecg, axis=1, keepdims=True)  # unit vectors: <e_i, e_j> < <e_i, e_i>
    sets = CandidateSets(
        query_rows=np.arange(40),
        candidate_rows=np.stack([np.roll(np.arange(40), -q)[:5] for q in range(40)]),
        true_position=np.zeros(40, dtype=np.int64),
    )
    # Labs that leave the score <ecg, cxr>: ones for the MIP, zeros for CLIP's sum.
    for objective, labs in (("symile", np.ones_like(ecg)), ("clip", np.zeros_like(ecg))):
        ranks = rank_queries(objective, ecg, labs, ecg, sets, seed=0)
        assert (ranks.candidate_ranks == 1).all() and (ranks.pool_ranks == 1).all(), objective


def test_masked_labs_query_means_every_lab_missing(
    unrelated: Path, untrained_runs: dict[str, Path]
) -> None:
    loaded = load_run(untrained_runs["symile"])
    arrays = SplitArrays(unrelated, "test")
    fill = DatasetDir(unrelated).fill_values
    embeddings = embed_for_evaluation(loaded, arrays, fill, batch_size=50, device="cpu")
    assert embeddings.labs_masked.shape == embeddings.labs.shape
    with torch.no_grad():
        for row in (0, 17, 299):
            observed = torch.zeros(1, arrays.n_labs)
            values = torch.from_numpy(np.asarray(arrays.labs[row : row + 1]).copy())
            # What the model sees for a missing lab: the fill percentile, observed = 0.
            values[:, :] = torch.from_numpy(fill)
            expected = loaded.model.encode_labs(values, observed)[0].numpy()
            np.testing.assert_allclose(embeddings.labs_masked[row], expected, rtol=1e-5, atol=1e-6)
            full = loaded.model.encode_labs(
                torch.from_numpy(np.array(arrays.labs[row : row + 1], dtype=np.float32)),
                torch.from_numpy(np.array(arrays.labs_observed[row : row + 1], dtype=np.float32)),
            )[0].numpy()
            np.testing.assert_allclose(embeddings.labs[row], full, rtol=1e-4, atol=1e-5)


def test_lab_bins_partition_the_counts_and_the_queries(report: Path) -> None:
    for n_labs in (6, 12, 50):
        bins = lab_count_bins(n_labs, 5)
        covered = [c for lo, hi in bins for c in range(lo, hi + 1)]
        assert covered == list(range(n_labs + 1))
    metrics = json.loads((report / "metrics.json").read_text())
    for run in metrics["runs"]:
        assert sum(b["n"] for b in run["by_observed_labs"]) == 300


def test_comparing_a_run_with_itself_gives_zero(
    untrained_runs: dict[str, Path], tmp_path: Path
) -> None:
    run = untrained_runs["clip"]
    result = evaluate(
        EvaluateConfig(run_dir=run, compare=(run,), n_bootstrap=100, out_dir=tmp_path, plots=False)
    )
    names = [r["name"] for r in result.metrics["runs"]]
    assert names[0] != names[1]  # made unique
    for key, value in result.metrics["comparisons"][0].items():
        if isinstance(value, dict):
            assert value["estimate"] == value["ci_low"] == value["ci_high"] == 0.0, key
    assert not (tmp_path / "report.html").read_text().count("data:image/png")


def test_val_accuracy_matches_the_trainers(tmp_path: Path) -> None:
    """Evaluating the best checkpoint on val reproduces the val_acc the trainer logged."""
    dataset = write_dataset(tmp_path / "planted", n_train=32, n_val=24, n_test=8, ecg_samples=1000)
    config = load_config(write_tiny_config(tmp_path / "c.toml", epochs=1, max_steps=2))
    result = train(config, dataset, tmp_path / "run", progress=False)
    evaluation = evaluate(
        EvaluateConfig(
            run_dir=tmp_path / "run",
            split="val",
            n_bootstrap=50,
            out_dir=tmp_path / "r",
            n_examples=2,
        )
    )
    assert evaluation.metrics["runs"][0]["candidate_top1"]["estimate"] == result.best_val_acc
    assert evaluation.metrics["dataset"] == str(dataset)


def test_mismatched_inputs_are_refused(untrained_runs: dict[str, Path], tmp_path: Path) -> None:
    other = write_dataset(
        tmp_path / "other", n_train=8, n_val=8, n_test=8, n_labs=3, ecg_samples=1000
    )
    with pytest.raises(EvaluationError, match="labs"):
        evaluate(EvaluateConfig(run_dir=untrained_runs["symile"], data_dir=other, plots=False))
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 1


def test_a_winner_is_named_only_when_the_paired_ci_excludes_zero(tmp_path: Path) -> None:
    from symile_clinical.evaluation.report import comparison_sentences
    from symile_clinical.formats.atomic import write_json_atomic

    def paired(estimate: float, low: float, high: float) -> dict:
        return {
            "estimate": estimate,
            "ci_low": low,
            "ci_high": high,
            "significant": low > 0 or high < 0,
            "fraction_a_better": 0.5,
        }

    metrics = {
        "comparisons": [
            {"a": "symile", "b": "clip", "candidate_top1": paired(0.05, 0.01, 0.09)},
            {"a": "symile", "b": "clip2", "candidate_top1": paired(-0.04, -0.07, -0.01)},
            {"a": "symile", "b": "clip3", "candidate_top1": paired(0.03, -0.01, 0.07)},
        ]
    }
    first, second, third = comparison_sentences(metrics)
    assert "symile beats clip at 95%" in first
    assert "clip2 beats symile" in second
    assert "no winner is claimed" in third and "beats" not in third
    # NaN (e.g. an empty bin's statistic) is written as JSON null, never as bare NaN.
    write_json_atomic(tmp_path / "m.json", {"x": float("nan"), "y": [np.float32(0.5)]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": [0.5]}
