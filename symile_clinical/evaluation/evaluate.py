"""Evaluate trained runs on a dataset split: the paper's retrieval protocol with error bars.

For each run (the main one and any --compare runs), on the same split of the same dataset:

- candidate sets (the paper's task): each query (an admission's ECG + labs) ranks its K
  candidate CXRs from candidates.parquet (its own + K-1 others) by the run's own score
  (objective/scores.py: MIP for Symile, sum of dot products for CLIP, -volume for GRAM,
  -area for TRIANGLE, the gated MIP for Gated Symile); top-1 accuracy with random
  tie-breaking, and MRR,
  each with a bootstrap SE and 95% CI over queries; chance is 1/K;
- the whole pool: every CXR of the split is a candidate; recall@1/5/10, MRR, median rank;
- missing labs: top-1 by number of observed labs (bins), and with every lab masked
  (observed = 0, values = dataset.json's fill percentiles), i.e. an ECG-only query, with
  the paired difference full - ECG-only; for Gated Symile, whose score has a NULL option for
  a modality flagged missing, both ways side by side ("missing_labs"): the observed mask
  alone (no flag) and the NULL option (the labs of a query with no observed lab, and of
  every ECG-only query, flagged missing). Its main metrics score as it trained: the labs of
  a query with no observed lab flagged missing;
- comparison: the main run minus each compare run, paired over the same resampled queries.

metrics.json (written by report.write_report) is the dict `evaluate` returns:

    schema_version, dataset, split, n_queries, n_candidates, pool_size, n_labs,
    chance_top1, seed, bootstrap {n_resamples, seed, confidence},
    lab_bins [{label, low, high}], warnings [str] (e.g. fewer candidates than the paper's 10),
    runs [{name, run_dir, objective, checkpoint, checkpoint_sha256,
           candidate_top1 {estimate, se, ci_low, ci_high, n, n_resamples, confidence},
           candidate_mrr {...}, candidate_rank_counts [K ints: queries at rank 1..K],
           pool {recall@1, recall@5, recall@10, mrr: estimates; median_rank},
           by_observed_labs [{label, low, high, n, top1 {...} | null}],
           ecg_only {candidate_top1, pool, full_minus_ecg_only {... , fraction_a_better,
                     significant}},
           missing_labs (Gated Symile only) {observed_mask, null_option: each
                     {by_observed_labs [...], ecg_only {...}}}}],
    comparisons [{a, b, candidate_top1, candidate_mrr, pool_recall@1, pool_mrr,
                  ecg_only_candidate_top1}: paired differences a - b]
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from symile_clinical.errors import SymileClinicalError
from symile_clinical.evaluation.bootstrap import (
    DEFAULT_RESAMPLES,
    BootstrapEstimate,
    bootstrap_mean,
    paired_bootstrap_difference,
)
from symile_clinical.evaluation.embedding import (
    SplitEmbeddings,
    cxr_thumbnails,
    embed_masked_labs,
    embed_split,
)
from symile_clinical.evaluation.report import (
    ExampleQuery,
    plot_accuracy_by_lab_bins,
    plot_accuracy_with_ci,
    plot_example_queries,
    plot_rank_histogram,
    write_report,
)
from symile_clinical.evaluation.retrieval import (
    QueryRanks,
    chance_top1,
    median_rank,
    rank_queries,
    top1_correct,
    top_k_indices,
)
from symile_clinical.formats.checkpoint import read_provenance
from symile_clinical.formats.dataset_dir import CandidateSets, DatasetDir, DatasetError, SplitArrays
from symile_clinical.formats.run_dir import LoadedRun, RunDir, load_run
from symile_clinical.objective.scores import objective_score

log = logging.getLogger(__name__)

PAPER_CANDIDATES = 10  # the Symile-MIMIC protocol: the true CXR among 10

SCHEMA_VERSION = 1
POOL_RECALL_AT = (1, 5, 10)


class EvaluationError(SymileClinicalError):
    """Runs and data that cannot be evaluated together; names the path and the reason."""


@dataclass(frozen=True)
class EvaluateConfig:
    """What `evaluate` needs; built by the CLI from its options."""

    run_dir: Path
    data_dir: Path | None = None  # default: the dataset recorded in the run's config.json
    compare: tuple[Path, ...] = ()
    checkpoint: str = "best"
    split: str = "test"
    n_bootstrap: int = DEFAULT_RESAMPLES
    confidence: float = 0.95
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    n_lab_bins: int = 5
    n_examples: int = 6
    examples_top_k: int = 5
    thumbnail_size: int = 96
    out_dir: Path | None = None  # default: RUN/report
    plots: bool = True


@dataclass
class RunEvaluation:
    """One run's metrics dict plus the per-query values that paired comparisons need."""

    metrics: dict[str, Any]
    per_query: dict[str, np.ndarray]
    ranks: QueryRanks
    examples: list[ExampleQuery] = field(default_factory=list)


@dataclass(frozen=True)
class EvaluationResult:
    """The metrics dict (as in metrics.json) and the files written."""

    metrics: dict[str, Any]
    files: dict[str, Path]


# ----------------------------------------------------------------------------- pure parts


def embed_for_evaluation(
    loaded: LoadedRun, arrays: SplitArrays, fill: np.ndarray, batch_size: int, device: str
) -> SplitEmbeddings:
    """Embed every row of a split with a run's model, with `labs_masked` (every lab masked).

    fill: float32 [L], the percentile every missing lab is filled with (dataset.json).
    With every lab masked all rows have the same labs input, so one embedding serves all.
    """
    model = loaded.model.to(device)
    embeddings = embed_split(model, arrays, device, batch_size)
    masked = embed_masked_labs(model, fill, device)
    # A read-only broadcast view: [N, d] without N copies of the same row.
    return replace(embeddings, labs_masked=np.broadcast_to(masked, embeddings.labs.shape))


def lab_count_bins(n_labs: int, n_bins: int = 5) -> list[tuple[int, int]]:
    """Inclusive ranges of observed-lab counts covering 0..n_labs in about n_bins equal bins."""
    edges = np.unique(np.round(np.linspace(0, n_labs + 1, n_bins + 1)).astype(int))
    return [(int(lo), int(hi) - 1) for lo, hi in itertools.pairwise(edges)]


def _bin_label(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _estimate(values: np.ndarray, config: EvaluateConfig) -> BootstrapEstimate:
    return bootstrap_mean(values, config.n_bootstrap, config.seed, config.confidence)


def pool_metrics(pool_ranks: np.ndarray, config: EvaluateConfig) -> dict[str, Any]:
    """recall@1/5/10 and MRR over the whole pool (with CIs) and the median rank."""
    metrics: dict[str, Any] = {
        f"recall@{k}": _estimate((pool_ranks <= k).astype(float), config).to_dict()
        for k in POOL_RECALL_AT
    }
    metrics["mrr"] = _estimate(1.0 / pool_ranks, config).to_dict()
    metrics["median_rank"] = median_rank(pool_ranks)
    return metrics


def _paired(a: np.ndarray, b: np.ndarray, config: EvaluateConfig) -> dict[str, Any]:
    return paired_bootstrap_difference(
        a, b, config.n_bootstrap, config.seed, config.confidence
    ).to_dict()


def by_observed_labs(
    top1: np.ndarray, n_observed: np.ndarray, bins: list[tuple[int, int]], config: EvaluateConfig
) -> list[dict[str, Any]]:
    """Top-1 (with CI) of the queries in each bin of observed-lab counts."""
    by_bins = []
    for low, high in bins:
        inside = (n_observed >= low) & (n_observed <= high)
        by_bins.append(
            {
                "label": _bin_label(low, high),
                "low": low,
                "high": high,
                "n": int(inside.sum()),
                "top1": _estimate(top1[inside], config).to_dict() if inside.any() else None,
            }
        )
    return by_bins


def ecg_only_metrics(
    top1: np.ndarray, masked_ranks: QueryRanks, config: EvaluateConfig
) -> dict[str, Any]:
    """The ECG-only query's top-1 and pool metrics, and the paired labs' gain full - ECG-only."""
    masked_top1 = top1_correct(masked_ranks.candidate_ranks)
    return {
        "candidate_top1": _estimate(masked_top1, config).to_dict(),
        "pool": pool_metrics(masked_ranks.pool_ranks, config),
        "full_minus_ecg_only": _paired(top1, masked_top1, config),
    }


def summarise_run(
    ranks: QueryRanks,
    masked_ranks: QueryRanks,
    n_observed: np.ndarray,
    bins: list[tuple[int, int]],
    config: EvaluateConfig,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every metric of one run from its per-query ranks (full and ECG-only queries).

    n_observed: int [Q], labs observed in each query. Returns (metrics, per-query values).
    """
    k = ranks.candidate_scores.shape[1]
    top1 = top1_correct(ranks.candidate_ranks)
    masked_top1 = top1_correct(masked_ranks.candidate_ranks)
    metrics = {
        "candidate_top1": _estimate(top1, config).to_dict(),
        "candidate_mrr": _estimate(1.0 / ranks.candidate_ranks, config).to_dict(),
        "candidate_rank_counts": np.bincount(ranks.candidate_ranks, minlength=k + 1)[1:].tolist(),
        "pool": pool_metrics(ranks.pool_ranks, config),
        "by_observed_labs": by_observed_labs(top1, n_observed, bins, config),
        "ecg_only": ecg_only_metrics(top1, masked_ranks, config),
    }
    per_query = {
        "candidate_top1": top1,
        "candidate_mrr": 1.0 / ranks.candidate_ranks,
        "pool_recall@1": (ranks.pool_ranks <= 1).astype(float),
        "pool_mrr": 1.0 / ranks.pool_ranks,
        "ecg_only_candidate_top1": masked_top1,
    }
    return metrics, per_query


def missing_labs_ways(
    ranks: QueryRanks,
    mask_only: QueryRanks,
    masked: QueryRanks,
    null_ecg_only: QueryRanks,
    n_observed: np.ndarray,
    bins: list[tuple[int, int]],
    config: EvaluateConfig,
) -> dict[str, Any]:
    """Gated Symile's two ways of handling missing labs, side by side: "observed_mask" (no
    flag: missing labs reach the score only through the labs encoder's observed mask) and
    "null_option" (the labs of a query with no observed lab, and of every ECG-only query,
    flagged missing: replaced by the learnt neutral vector). Each has top-1 by observed-lab
    bins and the ECG-only query with the labs' gain over it."""
    top1 = top1_correct(ranks.candidate_ranks)
    mask_top1 = top1_correct(mask_only.candidate_ranks)
    return {
        "observed_mask": {
            "by_observed_labs": by_observed_labs(mask_top1, n_observed, bins, config),
            "ecg_only": ecg_only_metrics(mask_top1, masked, config),
        },
        "null_option": {
            "by_observed_labs": by_observed_labs(top1, n_observed, bins, config),
            "ecg_only": ecg_only_metrics(top1, null_ecg_only, config),
        },
    }


def compare_runs(a: RunEvaluation, b: RunEvaluation, config: EvaluateConfig) -> dict[str, Any]:
    """Paired bootstrap differences a - b of every per-query metric (same queries)."""
    result: dict[str, Any] = {"a": a.metrics["name"], "b": b.metrics["name"]}
    for key, values in a.per_query.items():
        result[key] = _paired(values, b.per_query[key], config)
    return result


# ----------------------------------------------------------------------------- I/O edges


def select_examples(
    ranks: QueryRanks,
    sets: CandidateSets,
    arrays: SplitArrays,
    titles: list[str],
    config: EvaluateConfig,
) -> list[ExampleQuery]:
    """A seeded sample of queries with their top-k candidate thumbnails, best first."""
    n = min(config.n_examples, len(sets))
    if n == 0:
        return []
    rng = np.random.default_rng([config.seed, 2])
    chosen = np.sort(rng.choice(len(sets), size=n, replace=False))
    top = top_k_indices(ranks.candidate_scores[chosen], config.examples_top_k, rng)
    examples = []
    for q, best in zip(chosen, top, strict=True):
        rows = sets.candidate_rows[q, best]
        true_row = int(sets.query_rows[q])
        hits = np.flatnonzero(rows == true_row)
        shown = cxr_thumbnails(arrays.cxr[np.append(rows, true_row)], config.thumbnail_size)
        examples.append(
            ExampleQuery(
                title=titles[q],
                thumbnails=shown[:-1],
                scores=ranks.candidate_scores[q, best],
                true_position=int(hits[0]) if hits.size else None,
                true_thumbnail=shown[-1],
                true_rank=int(ranks.candidate_ranks[q]),
            )
        )
    return examples


def _query_titles(
    dataset: DatasetDir, split: str, query_rows: np.ndarray, n_observed: np.ndarray, n_labs: int
) -> list[str]:
    """'hadm 123, 7/50 labs' per query; the row number when the manifest is missing."""
    ids = dataset.hadm_ids(split)
    return [
        f"{'hadm ' + str(ids[int(r)]) if int(r) in ids else 'row ' + str(int(r))}, "
        f"{int(k)}/{n_labs} labs"
        for r, k in zip(query_rows, n_observed, strict=True)
    ]


def _run_names(runs: list[RunDir]) -> list[str]:
    """Folder names, made unique with a suffix when two runs share one."""
    names: list[str] = []
    for run in runs:
        name = run.name
        while name in names:
            name = f"{name}_{len(names)}"
        names.append(name)
    return names


def evaluate_run(
    loaded: LoadedRun,
    name: str,
    arrays: SplitArrays,
    sets: CandidateSets,
    fill: np.ndarray,
    bins: list[tuple[int, int]],
    titles: list[str],
    config: EvaluateConfig,
) -> RunEvaluation:
    """Embed the split with one run and compute all of its metrics."""
    if loaded.config.model.n_labs != arrays.n_labs:
        raise EvaluationError(
            loaded.run_dir,
            f"model takes {loaded.config.model.n_labs} labs, the dataset has {arrays.n_labs}",
        )
    log.info("embedding %s split (%d rows) with %s", arrays.split, len(arrays), name)
    embeddings = embed_for_evaluation(loaded, arrays, fill, config.batch_size, config.device)
    score = objective_score(loaded.objective, loaded.model)
    labs_missing = arrays.labs_missing
    ecg, cxr = embeddings.ecg, embeddings.cxr
    ranks = rank_queries(
        score, ecg, embeddings.labs, cxr, sets, config.seed, labs_missing=labs_missing
    )
    masked = rank_queries(score, ecg, embeddings.labs_masked, cxr, sets, config.seed)
    n_observed = np.asarray(arrays.labs_observed[sets.query_rows]).sum(axis=1)
    metrics, per_query = summarise_run(ranks, masked, n_observed, bins, config)
    if score.reads_missing_flags:
        mask_only = rank_queries(score, ecg, embeddings.labs, cxr, sets, config.seed)
        every_lab_flagged = np.ones(len(arrays), dtype=bool)
        null_ecg_only = rank_queries(
            score,
            ecg,
            embeddings.labs_masked,
            cxr,
            sets,
            config.seed,
            labs_missing=every_lab_flagged,
        )
        metrics["missing_labs"] = missing_labs_ways(
            ranks, mask_only, masked, null_ecg_only, n_observed, bins, config
        )
    header = {
        "name": name,
        "run_dir": str(loaded.run_dir),
        "objective": loaded.objective,
        "checkpoint": str(loaded.checkpoint_path),
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "encoders": encoders_line(loaded.config.encoder_weights),
    }
    examples = select_examples(ranks, sets, arrays, titles, config) if config.plots else []
    return RunEvaluation({**header, **metrics}, per_query, ranks, examples)


def encoders_line(weights: str | None) -> str:
    """Where a run's encoders started: random weights, or what a pretrained file learnt from."""
    if not weights:
        return "encoders from random weights"
    provenance = read_provenance(weights)
    if provenance is None:
        return f"encoders from {Path(weights).name} (what they learnt from is not recorded)"
    return (
        f"encoders pretrained on {provenance['label_source']} "
        f"({provenance['labels']}, {provenance['epochs']} epochs)"
    )


def evaluate(config: EvaluateConfig) -> EvaluationResult:
    """Evaluate config.run_dir (and config.compare) and write the report folder."""
    main = load_run(config.run_dir, checkpoint=config.checkpoint, device=config.device)
    dataset = main.run.dataset(config.data_dir)
    others = [
        load_run(p, checkpoint=config.checkpoint, device=config.device) for p in config.compare
    ]
    for other in others:
        trained_on = other.run.recorded_dataset()
        if trained_on is not None and trained_on != dataset:
            log.warning(
                "%s was trained on %s; it is evaluated on %s with the others",
                other.run_dir,
                trained_on.path,
                dataset.path,
            )
    fill = dataset.fill_values
    arrays = dataset.split(config.split)
    sets = dataset.candidates(config.split)
    if len(sets) == 0:
        raise DatasetError(dataset.candidates_path, f"no {config.split} candidate sets")
    n_observed = np.asarray(arrays.labs_observed[sets.query_rows]).sum(axis=1)
    bins = lab_count_bins(arrays.n_labs, config.n_lab_bins)
    titles = _query_titles(dataset, config.split, sets.query_rows, n_observed, arrays.n_labs)

    loaded_runs = [main, *others]
    names = _run_names([r.run for r in loaded_runs])
    evaluations = [
        evaluate_run(run, name, arrays, sets, fill, bins, titles, config)
        for run, name in zip(loaded_runs, names, strict=True)
    ]
    k = int(sets.candidate_rows.shape[1])
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "dataset": str(dataset.path),
        "split": config.split,
        "n_queries": len(sets),
        "n_candidates": k,
        "pool_size": len(arrays),
        "n_labs": arrays.n_labs,
        "chance_top1": chance_top1(k),
        "seed": config.seed,
        "bootstrap": {
            "n_resamples": config.n_bootstrap,
            "seed": config.seed,
            "confidence": config.confidence,
        },
        "lab_bins": [{"label": _bin_label(lo, hi), "low": lo, "high": hi} for lo, hi in bins],
        "runs": [e.metrics for e in evaluations],
        "comparisons": [compare_runs(evaluations[0], e, config) for e in evaluations[1:]],
        "warnings": [],
    }
    if k < PAPER_CANDIDATES:  # a small split: preprocess served fewer candidates than asked
        warning = (
            f"{k} candidates per query, fewer than the paper's {PAPER_CANDIDATES} (the split is "
            f"small): chance top-1 is {100 * chance_top1(k):.1f}%, so accuracies are not "
            "comparable with the paper's"
        )
        metrics["warnings"].append(warning)
        log.warning("%s", warning)
    pngs: dict[str, bytes] = {}
    if config.plots:
        pngs = {
            "accuracy": plot_accuracy_with_ci(metrics),
            "lab_bins": plot_accuracy_by_lab_bins(metrics),
            "ranks": plot_rank_histogram(metrics),
            "examples": plot_example_queries(evaluations[0].examples, names[0]),
        }
    out_dir = config.out_dir or main.run.report_dir
    files = write_report(out_dir, metrics, pngs)
    for evaluation in evaluations:
        m = evaluation.metrics
        log.info(
            "%s (%s): top-1 %.3f [%.3f, %.3f] (chance %.3f), ECG-only %.3f",
            m["name"],
            m["objective"],
            m["candidate_top1"]["estimate"],
            m["candidate_top1"]["ci_low"],
            m["candidate_top1"]["ci_high"],
            metrics["chance_top1"],
            m["ecg_only"]["candidate_top1"]["estimate"],
        )
    log.info("report written to %s", out_dir)
    return EvaluationResult(metrics=metrics, files=files)
