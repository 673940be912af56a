"""One cell of the joint-fraction study (train one run, measure it), and the summary over cells.

A cell is a cohort (joint fraction, cohort seed), an objective with its recipe and a training
seed. `run_cell` trains it (resuming a killed run) and measures its best checkpoint once on
the test split; `summarise_study` and `report_tables` reduce the cells' results to the
study's tables. The measures read a run directory and a dataset directory only: no MIMIC and
no synthetic truth (app/workflows/study.py makes the cohorts and schedules the cells;
experiments/study_report.py writes the report; benchmarks/recipe_search.py adds probes
against the synthetic truth):

- `measure_embeddings`: top-1 among the K candidates with the full query, with every lab
  masked (an ECG-only query) and with the labs embeddings shuffled across the split's
  admissions (each query keeps its ECG but gets another admission's labs), per query so
  that seeds and objectives can be paired;
- `embedding_spread`: per modality, the mean cosine between different rows and the
  effective rank, which show a collapsed modality (all rows alike, or a few directions);
- `logit_scale_trajectory`: exp(logit scale) by step from a run's metrics log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from symile_clinical.errors import SymileClinicalError
from symile_clinical.evaluation.embedding import SplitEmbeddings, embed_masked_labs, embed_split
from symile_clinical.evaluation.retrieval import rank_queries, top1_correct
from symile_clinical.formats.dataset_dir import DatasetDir
from symile_clinical.formats.run_dir import RunDir
from symile_clinical.objective.scores import ObjectiveScore, objective_score

if TYPE_CHECKING:
    from symile_clinical.formats.run_config import TrainConfig

log = logging.getLogger(__name__)


class StudyError(SymileClinicalError):
    """A study folder that cannot be resumed as asked; names the file and the reason."""


@dataclass
class SplitMeasures:
    """Per-query top-1 hits (float64 [Q] of 0/1) of one run on one split."""

    full: np.ndarray
    ecg_only: np.ndarray
    labs_shuffled: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means: top-1 full, ECG-only, labs shuffled; the labs' gain (full - ECG-only)."""
        return {
            "top1": float(self.full.mean()),
            "ecg_only_top1": float(self.ecg_only.mean()),
            "labs_shuffled_top1": float(self.labs_shuffled.mean()),
            "labs_gain": float(self.full.mean() - self.ecg_only.mean()),
        }


def split_embeddings(
    run: RunDir, dataset: DatasetDir, split: str, checkpoint: str = "best"
) -> tuple[SplitEmbeddings, np.ndarray, ObjectiveScore]:
    """(embeddings of every row of `split`, the ECG-only labs embedding [d], the run's score:
    objective_score, with its gate for Gated Symile)."""
    loaded = run.load(checkpoint)
    embeddings = embed_split(loaded.model, dataset.split(split), "cpu", 128)
    masked = embed_masked_labs(loaded.model, dataset.fill_values)
    return embeddings, masked, objective_score(loaded.objective, loaded.model)


def measure_embeddings(
    embeddings: SplitEmbeddings,
    masked_labs: np.ndarray,
    objective: str | ObjectiveScore,
    dataset: DatasetDir,
    split: str,
    seed: int = 0,
) -> SplitMeasures:
    """Top-1 per query with the full query, ECG-only, and labs shuffled across admissions
    (a seeded permutation of the split's rows: np.random.default_rng([seed, 3])). The ECG-only
    query flags its labs missing (Gated Symile's null option; other scores ignore the flag)."""
    sets = dataset.candidates(split)
    n = embeddings.ecg.shape[0]
    shuffled = embeddings.labs[np.random.default_rng([seed, 3]).permutation(n)]
    masked = np.broadcast_to(masked_labs, embeddings.labs.shape)
    none_missing, all_missing = None, np.ones(n, dtype=bool)
    hits = []
    for labs, missing in (
        (embeddings.labs, none_missing),
        (masked, all_missing),
        (shuffled, none_missing),
    ):
        ranks = rank_queries(
            objective, embeddings.ecg, labs, embeddings.cxr, sets, seed, labs_missing=missing
        )
        hits.append(top1_correct(ranks.candidate_ranks))
    return SplitMeasures(*hits)


def effective_rank(x: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the centred rows [N, d]."""
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    p = s / max(float(s.sum()), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_cosine(x: np.ndarray) -> float:
    """Mean cosine similarity between different rows of [N, d] (1: collapsed to one point)."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(unit)
    total = unit.sum(axis=0)
    return float((total @ total - n) / max(n * (n - 1), 1))


def embedding_spread(embeddings: SplitEmbeddings) -> dict[str, dict[str, float]]:
    """Per modality: mean cosine between rows, effective rank, and mean norm."""
    return {
        name: {
            "mean_cosine": mean_cosine(x),
            "effective_rank": effective_rank(x),
            "mean_norm": float(np.linalg.norm(x, axis=1).mean()),
        }
        for name, x in (("ecg", embeddings.ecg), ("labs", embeddings.labs), ("cxr", embeddings.cxr))
    }


def logit_scale_trajectory(run: RunDir) -> list[tuple[int, float]]:
    """(step, exp(logit scale)) of every train event in the run's metrics log."""
    if not run.metrics_log.exists():
        return []
    points = []
    for line in run.metrics_log.read_text().splitlines():
        if line.strip():
            event = json.loads(line)
            if event.get("event") == "train":
                points.append((int(event["step"]), float(event["logit_scale"])))
    return points


def run_summary(run: RunDir) -> dict[str, Any]:
    """The end event of a run's metrics log (best val accuracy, epochs), or {}."""
    if not run.metrics_log.exists():
        return {}
    ends = [
        json.loads(line)
        for line in run.metrics_log.read_text().splitlines()
        if line.strip() and '"end"' in line
    ]
    return ends[-1] if ends else {}


# ----------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class StudyCell:
    """One training run of the study: a cohort (joint fraction, cohort seed), an objective
    with its recipe (a preset name), and a training seed."""

    joint_fraction: float
    cohort_seed: int
    objective: str
    recipe: str
    seed: int
    start: str = ""  # the encoders' start (e.g. "derived", "oracle", "random"); "" = the one

    @property
    def key(self) -> str:
        """Folder name of the cell under OUT/runs/ (under OUT/runs/<start>/ when named)."""
        cell = f"F{self.joint_fraction:g}_c{self.cohort_seed}/{self.objective}/s{self.seed}"
        return f"{self.start}/{cell}" if self.start else cell


def cell_config(
    cell: StudyCell, max_steps: int | None = None, encoder_weights: str | None = None
) -> TrainConfig:
    """The TrainConfig of a cell: its recipe with the cell's objective and seed, on CPU,
    with its encoders started from `encoder_weights` when given."""
    from symile_clinical.training.config import load_config

    config = load_config(cell.recipe)
    changes: dict[str, Any] = {"objective": cell.objective, "seed": cell.seed, "device": "cpu"}
    if max_steps is not None:
        changes["max_steps"] = max_steps
    if encoder_weights is not None:
        changes["encoder_weights"] = encoder_weights
    return dataclasses.replace(config, **changes)


def run_cell(
    cell: StudyCell,
    dataset: str | Path,
    runs_root: str | Path,
    max_steps: int | None = None,
    encoder_weights: str | None = None,
) -> dict[str, Any]:
    """Train a cell (resuming a killed run) and measure its best checkpoint on the TEST split,
    once; the result (with per-query hits) is RUN/study_result.json. A finished cell is read
    back. Runs with one torch thread: the study runs cells side by side instead."""
    import torch

    from symile_clinical.formats.atomic import write_json_atomic
    from symile_clinical.formats.checkpoint import file_sha256
    from symile_clinical.formats.run_config import config_to_dict
    from symile_clinical.training.trainer import train

    torch.set_num_threads(1)
    run = RunDir(Path(runs_root) / cell.key)
    result_path = run.study_result
    config = cell_config(cell, max_steps, encoder_weights)
    weights_sha = file_sha256(encoder_weights) if encoder_weights else None
    if result_path.exists():
        result = json.loads(result_path.read_text())
        # The weights are compared by content: a moved file is the same start, a rewritten one not.
        if _without_weights(result.get("config", {})) != _without_weights(config_to_dict(config)):
            raise StudyError(
                result_path, "was measured with another recipe; use a new --out for this one"
            )
        if result.get("encoder_weights_sha256") != weights_sha:
            raise StudyError(
                result_path, "was trained from other encoder weights; use a new --out for this one"
            )
        return result
    data = DatasetDir(dataset)
    if not run_summary(run):
        train(config, data, run, resume=run.has_checkpoint(), progress=False)
    embeddings, masked, objective = split_embeddings(run, data, "test")
    measures = measure_embeddings(embeddings, masked, objective, data, "test", cell.seed)
    result = {
        **dataclasses.asdict(cell),
        **measures.summary(),
        "config": config_to_dict(config),
        "encoder_weights_sha256": weights_sha,
        "best_val_acc": run_summary(run).get("best_val_acc"),
        "n_test_queries": int(measures.full.shape[0]),
        "hits": {
            "full": measures.full.astype(int).tolist(),
            "ecg_only": measures.ecg_only.astype(int).tolist(),
            "labs_shuffled": measures.labs_shuffled.astype(int).tolist(),
        },
    }
    write_json_atomic(result_path, result)
    return result


def _without_weights(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key != "encoder_weights"}


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean with a Student-t CI over independent runs (seeds); n = 1 gives a NaN interval."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan"), "n": n}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def summarise_study(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per (encoders' start, F, objective): mean test top-1 and labs' gain with CIs over runs;
    per (start, F) the Symile - CLIP difference paired by (cohort seed, training seed); the
    query-level CI half-width of one run's top-1 (binomial, at the observed accuracy)."""
    fractions = sorted({r["joint_fraction"] for r in results})
    seen = list(dict.fromkeys(r["objective"] for r in results))
    objectives = [o for o in ("symile", "clip") if o in seen] + [
        o for o in seen if o not in ("symile", "clip")
    ]
    starts = list(dict.fromkeys(r.get("start", "") for r in results))
    cells: dict[str, Any] = {}
    differences = {}
    against: dict[str, Any] = {}  # Symile - each other objective, paired
    for start in starts:
        prefix = f"{start}/" if start else ""
        mine = [r for r in results if r.get("start", "") == start]
        for f in fractions:
            for objective in objectives:
                rows = [r for r in mine if r["joint_fraction"] == f and r["objective"] == objective]
                if not rows:
                    continue
                top1 = [r["top1"] for r in rows]
                n_queries = int(np.mean([r["n_test_queries"] for r in rows]))
                p = float(np.mean(top1))
                cells[f"{prefix}{f:g}/{objective}"] = {
                    "start": start,
                    "joint_fraction": f,
                    "objective": objective,
                    "recipe": rows[0]["recipe"],
                    "top1": mean_ci(top1),
                    "ecg_only_top1": mean_ci([r["ecg_only_top1"] for r in rows]),
                    "labs_shuffled_top1": mean_ci([r["labs_shuffled_top1"] for r in rows]),
                    "labs_gain": mean_ci([r["labs_gain"] for r in rows]),
                    "n_test_queries": n_queries,
                    "one_run_ci_half_width": float(1.96 * np.sqrt(p * (1 - p) / max(n_queries, 1))),
                }
            by_key = {
                (r["cohort_seed"], r["seed"], r["objective"]): r["top1"]
                for r in mine
                if r["joint_fraction"] == f
            }
            for other in objectives:
                if other == "symile":
                    continue
                pairs = [
                    value - by_key[(c, s, other)]
                    for (c, s, objective), value in by_key.items()
                    if objective == "symile" and (c, s, other) in by_key
                ]
                if pairs:
                    key = f"{prefix}{f:g}/{other}"
                    against[key] = {"start": start, "joint_fraction": f, "objective": other}
                    against[key] |= mean_ci(pairs)
            if f"{prefix}{f:g}/clip" in against:  # the headline pair, keyed by F alone
                clip = dict(against[f"{prefix}{f:g}/clip"])
                clip.pop("objective")
                differences[f"{prefix}{f:g}"] = clip
    return {
        "fractions": fractions,
        "objectives": objectives,
        "starts": starts,
        "cells": cells,
        "symile_minus_clip": differences,
        "symile_minus_each": against,
        "n_runs": len(results),
    }


def _pct(estimate: dict[str, float], sign: str = "") -> str:
    """'34.0 [30.1, 38.2]' (percent) from a `mean_ci`; sign '+' for differences; no interval
    when there is none (one run)."""
    points = [estimate["mean"]]
    if not np.isnan(estimate["ci_low"]):
        points += [estimate["ci_low"], estimate["ci_high"]]
    mean, *interval = (f"{100 * value:{sign}.1f}" for value in points)
    return f"{mean} [{', '.join(interval)}]" if interval else mean


def report_tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the report's tables, shared by the markdown and HTML."""
    cells = summary["cells"]
    named = any(summary.get("starts", [""]))
    main = [
        [
            *([c.get("start", "")] if named else []),
            f"{c['joint_fraction']:g}",
            c["objective"],
            c["recipe"],
            _pct(c["top1"]),
            _pct(c["ecg_only_top1"]),
            _pct(c["labs_shuffled_top1"]),
            _pct(c["labs_gain"], "+"),
            str(c["top1"]["n"]),
            str(c["n_test_queries"]),
            f"+-{100 * c['one_run_ci_half_width']:.1f}",
        ]
        for c in cells.values()
    ]
    diffs = [
        [
            *([d.get("start", "")] if named else []),
            f"{d.get('joint_fraction', f):g}" if named else f,
            _pct(d, "+"),
            str(d["n"]),
            "yes" if not np.isnan(d["ci_low"]) and d["ci_low"] > 0 else "no",
        ]
        for f, d in summary["symile_minus_clip"].items()
    ]
    against = [
        [
            *([d.get("start", "")] if named else []),
            f"{d['joint_fraction']:g}",
            d["objective"],
            _pct(d, "+"),
            str(d["n"]),
            "yes" if not np.isnan(d["ci_low"]) and d["ci_low"] > 0 else "no",
        ]
        for d in summary.get("symile_minus_each", {}).values()
        if d["objective"] != "clip"
    ]
    tables = [
        (
            "Test top-1 per joint fraction and objective (mean over runs, 95% t-CI over runs; %)",
            [
                *(["encoders"] if named else []),
                "F",
                "objective",
                "recipe",
                "top-1",
                "ECG-only top-1",
                "labs shuffled top-1",
                "labs' gain",
                "runs",
                "test queries/run",
                "one run's CI",
            ],
            main,
        ),
        (
            "Symile - CLIP, paired by (cohort seed, training seed) (points, 95% t-CI)",
            [*(["encoders"] if named else []), "F", "Symile - CLIP", "pairs", "CI above 0"],
            diffs,
        ),
    ]
    if against:
        tables.append(
            (
                "Symile - each other objective, paired (points, 95% t-CI)",
                [
                    *(["encoders"] if named else []),
                    "F",
                    "objective",
                    "Symile - it",
                    "pairs",
                    "CI above 0",
                ],
                against,
            )
        )
    return tables
