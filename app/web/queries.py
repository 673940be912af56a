"""A query (ECG + labs) through the model into a ranking of candidate CXRs, and what drives it.

Pure functions of arrays and a loaded model: the Streamlit pages only display their results.
A query is embedded by `symile_clinical.evaluation.embedding` (never by the encoders
directly here) and ranked by the index's own `CandidateIndex.rank` under the run's
objective: Symile and CLIP through the vector candidates are dotted with
(`symile_clinical.objective.similarity.query_vector`), GRAM, TRIANGLE and Gated Symile by
their own score of each candidate (`symile_clinical.objective.scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from preprocessing.labs import approximate_value
from symile_clinical.evaluation.embedding import EmbeddingModel, embed_ecg, embed_labs
from symile_clinical.formats.dataset_dir import no_lab_observed
from symile_clinical.objective.scores import (
    ObjectiveScore,
    labs_missing_flags,
    objective_score,
    score_is_inner_product,
)
from symile_clinical.objective.similarity import query_vector
from symile_clinical.search.index import CandidateIndex, Ranking


@dataclass(frozen=True)
class Query:
    """One admission's model inputs: ecg float32 [12, T] (normalised as the dataset),
    labs float32 [L] percentiles (missing filled), observed float32 [L] (1 = observed)."""

    ecg: np.ndarray
    labs: np.ndarray
    observed: np.ndarray


def rank_candidates(
    index: CandidateIndex,
    objective: str,
    logit_scale: float,
    ecg_emb: np.ndarray,
    labs_emb: np.ndarray,
    k: int,
    pool: np.ndarray | None = None,
    true_position: int | None = None,
    *,
    observed: np.ndarray,
) -> Ranking:
    """Rank a pool (index positions; None = the whole index) for one query; best first.

    Ranked by `CandidateIndex.rank`: the query's vector under `objective` when its score is
    an inner product, else the query's embeddings under the index's (the run's) own score.
    Probabilities are the softmax of logit_scale * score over the whole pool. Ties go to the
    lower position. observed [L] (1 = observed): a query with no observed lab is flagged
    labs-missing, as evaluation flags it (Gated Symile's NULL option; other scores ignore it).
    """
    embeddings = [np.asarray(ecg_emb, np.float32), np.asarray(labs_emb, np.float32)]
    if score_is_inner_product(objective):
        query = query_vector(objective, embeddings)
        return index.rank(query, k, logit_scale, pool, true_position)
    labs_missing = labs_all_missing(observed)
    return index.rank(embeddings, k, logit_scale, pool, true_position, labs_missing=labs_missing)


def labs_all_missing(observed: np.ndarray) -> bool:
    """Whether a query's observed flags [L] (1 = observed) show no lab at all."""
    return bool(no_lab_observed(observed))


@dataclass(frozen=True)
class MaskedLabQueries:
    """A query with all its labs, then with each observed lab masked in turn.

    Row 0 is the full query, row i + 1 the query with lab observed_idx[i] masked: ecg and
    labs float32 [n + 1, d] are their embeddings; `vectors` float32 [n + 1, d] their query
    vectors when the objective's score is an inner product (a candidate's score changes are
    then one matrix product), else None and `score` (the run's) scores the rows.
    """

    observed_idx: np.ndarray  # int64 [n], lab columns observed in the query
    vectors: np.ndarray | None  # float32 [n + 1, d], inner-product objectives only
    ecg: np.ndarray | None = None  # float32 [n + 1, d]
    labs: np.ndarray | None = None  # float32 [n + 1, d]
    score: ObjectiveScore | None = None
    # bool [n + 1]: rows with no lab left observed (Gated Symile's NULL option, as in ranking)
    labs_missing: np.ndarray | None = None

    def candidate_scores(self, candidate_embedding: np.ndarray) -> np.ndarray:
        """float32 [n + 1]: one candidate's score [d] for every row."""
        candidate = np.asarray(candidate_embedding, np.float32)
        if self.vectors is not None:
            return self.vectors @ candidate
        if self.score is None or self.ecg is None or self.labs is None:
            raise ValueError("masked lab queries without query vectors need embeddings and score")
        pool = torch.from_numpy(np.ascontiguousarray(candidate[None]))
        rows = [torch.from_numpy(self.ecg), torch.from_numpy(self.labs)]
        flags = None
        if self.labs_missing is not None and self.labs_missing.any():
            flags = labs_missing_flags(torch.from_numpy(np.asarray(self.labs_missing, bool)))
        return self.score(pool, rows, flags).numpy()[:, 0]


def masked_lab_queries(
    model: EmbeddingModel,
    objective: str,
    query: Query,
    ecg_emb: np.ndarray | None = None,
    fill: np.ndarray | None = None,
) -> MaskedLabQueries:
    """The query vectors of `query` with each observed lab masked, in one forward pass.

    Masking sets the lab's observed flag to 0 and its percentile to the fill value, exactly
    as a missing lab is presented in training. `ecg_emb` [d], when the query's ECG
    embedding is known, spares the ECG encoder (the labs do not change it). `objective`'s
    score comes with `model` (Gated Symile's gate is the model's).
    """
    observed_idx = np.flatnonzero(np.asarray(query.observed) > 0)
    n = len(observed_idx)
    labs = np.repeat(np.asarray(query.labs, np.float32)[None], n + 1, axis=0)
    observed = np.repeat(np.asarray(query.observed, np.float32)[None], n + 1, axis=0)
    variants = np.arange(1, n + 1)
    if fill is not None:
        labs[variants, observed_idx] = np.asarray(fill, np.float32)[observed_idx]
    observed[variants, observed_idx] = 0.0
    if ecg_emb is None:
        ecg_emb = embed_ecg(model, np.asarray(query.ecg)[None])[0]
    labs_emb = embed_labs(model, labs, observed)
    ecg_rows = np.repeat(np.asarray(ecg_emb, np.float32)[None], n + 1, axis=0)
    score = objective_score(objective, model)
    if score.is_inner_product:
        vectors = query_vector(objective, [ecg_rows, labs_emb]).astype(np.float32)
        return MaskedLabQueries(observed_idx.astype(np.int64), vectors)
    return MaskedLabQueries(
        observed_idx.astype(np.int64),
        None,
        ecg_rows,
        labs_emb.astype(np.float32),
        score,
        labs_missing=no_lab_observed(observed),
    )


def lab_effects(
    masked: MaskedLabQueries,
    query: Query,
    candidate_embedding: np.ndarray,
    labels: Sequence[str],
    top: int = 5,
) -> pd.DataFrame:
    """How a candidate's score changes when each observed lab is masked (made missing).

    Columns: lab, percentile, score_change (masked minus full: negative = the lab
    supported this match); the `top` largest |score_change| first.
    """
    columns = ["lab", "percentile", "score_change"]
    if len(masked.observed_idx) == 0:
        return pd.DataFrame(columns=columns)
    changes, order = lab_score_changes(masked, candidate_embedding)
    shown = order[:top]
    return pd.DataFrame(
        {
            "lab": [labels[i] for i in masked.observed_idx[shown]],
            "percentile": np.asarray(query.labs)[masked.observed_idx[shown]].astype(float),
            "score_change": changes[shown],
        },
        index=shown,
    )


def lab_score_changes(
    masked: MaskedLabQueries, candidate_embedding: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(change, order): a candidate's score change float64 [n] when each observed lab is
    masked (masked minus full), and the order of the largest |change| first (stable)."""
    scores = masked.candidate_scores(candidate_embedding)
    changes = (scores[1:] - scores[0]).astype(np.float64)
    return changes, np.argsort(-np.abs(changes), kind="stable")


def labs_table(
    labs_spec: Sequence[dict[str, Any]],
    labs: np.ndarray,
    observed: np.ndarray,
    values: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per lab: label, unit, value, percentile, observed/missing.

    `values` are raw values when known (uploads); otherwise the value is read back from the
    training CDF at the stored percentile, by the inverse of the lab's percentile rule
    (preprocessing.labs.approximate_value; marked ≈).
    """
    rows = []
    for i, spec in enumerate(labs_spec):
        seen = bool(observed[i] > 0)
        if not seen:
            value = ""
        elif values is not None:
            value = f"{values[i]:g}"
        else:
            value = f"≈ {approximate_value(float(labs[i]), spec):.3g}"
        rows.append(
            {
                "lab": spec["label"],
                "itemid": int(spec["itemid"]),
                "unit": spec.get("unit", ""),
                "value": value,
                "percentile": round(float(labs[i]), 3) if seen else None,
                "status": "observed" if seen else "missing",
            }
        )
    return pd.DataFrame(rows)
