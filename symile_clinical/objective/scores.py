"""Each objective's retrieval score of a candidate CXR given a query's ECG and labs.

Retrieval, evaluation, training's validation and the index score with the objective the run
was trained with, through one object: `objective_score(objective, model)` returns an
`ObjectiveScore`, called as score(candidates [N, d], [ecg [Q, d], labs [Q, d]]) -> [Q, N],
higher is better, and with it the fact whether the score is an inner product <q, c>:

    objective      score of candidate c for query (e, l)         inner product
    symile         MIP(e, l, c) = <e * l, c>                     yes (q = e * l)
    clip           <e, c> + <l, c> = <e + l, c>                  yes (q = e + l)
    gram           -Vol(e, l, c), the Gram determinant's root    no
    triangle       -Area(e, l, c), the triangle's area           no
    gated-symile   the scaled gated MIP (the gate asks c)        no

Only an inner-product score can be served by an inner-product index (faiss); the others are
scored exactly, every candidate by the objective's own function. Gated Symile's score needs
the run's gate (model.gate) and takes missing flags: `missing` [Q, M - 1] bool, True where a
query modality is flagged missing (its NULL option taken outright); the other objectives
ignore it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from symile_clinical.objective import gated_symile, gram, triangle
from symile_clinical.objective.gated_symile import gated_symile_scores
from symile_clinical.objective.gram import gram_scores
from symile_clinical.objective.similarity import clip_scores, mip_scores
from symile_clinical.objective.triangle import triangle_scores

# objective -> (scores without a model, or None when the score needs the run's gate;
# whether the score is an inner product <q, c>)
_SCORES: dict[str, tuple[Callable[[Tensor, Sequence[Tensor]], Tensor] | None, bool]] = {
    "symile": (mip_scores, True),
    "clip": (clip_scores, True),
    "gram": (gram_scores, gram.score_is_inner_product),
    "triangle": (triangle_scores, triangle.score_is_inner_product),
    "gated-symile": (None, gated_symile.score_is_inner_product),
}
SCORED_OBJECTIVES = tuple(_SCORES)


def _known(objective: str) -> tuple[Callable[[Tensor, Sequence[Tensor]], Tensor] | None, bool]:
    if objective not in _SCORES:
        raise ValueError(f"unknown objective {objective!r}: expected one of {SCORED_OBJECTIVES}")
    return _SCORES[objective]


def score_is_inner_product(objective: str) -> bool:
    """Whether `objective`'s score of a candidate is an inner product <q(query), candidate>,
    i.e. whether an inner-product index can serve it."""
    return _known(objective)[1]


@dataclass(frozen=True)
class ObjectiveScore:
    """One objective's retrieval score; `gate` is the run's gate (gated-symile only)."""

    objective: str
    gate: nn.Module | None = None

    @property
    def is_inner_product(self) -> bool:
        """Whether the score is <q(query), candidate> (similarity.query_vector's q)."""
        return score_is_inner_product(self.objective)

    @property
    def reads_missing_flags(self) -> bool:
        """Whether `missing` changes the score (Gated Symile's NULL option)."""
        return self.gate is not None

    def __call__(
        self, candidates: Tensor, queries: Sequence[Tensor], missing: Tensor | None = None
    ) -> Tensor:
        """Scores [Q, N] of candidates [N, d] for queries (one [Q, d] tensor per query
        modality), on the candidates' device and dtype; missing [Q, M - 1] bool or None."""
        function, _ = _known(self.objective)
        if function is not None:
            return function(candidates, queries)
        return self._gated(candidates, queries, missing)

    def _gated(
        self, candidates: Tensor, queries: Sequence[Tensor], missing: Tensor | None
    ) -> Tensor:
        """Gated Symile's scores: the gate runs on the queries and the candidates on its own
        device (no gradient), the result comes back to the candidates' device and dtype."""
        if self.gate is None:
            raise ValueError("gated-symile's score needs the run's gate (model.gate)")
        first = next(self.gate.parameters())
        device, dtype = first.device, first.dtype
        with torch.no_grad():
            rows = [q.to(device, dtype) for q in queries]
            pool = candidates.to(device, dtype)
            was_training = self.gate.training
            self.gate.eval()
            try:
                terms = self.gate([*rows, pool])
            finally:
                self.gate.train(was_training)
            flags = None if missing is None else missing.to(device)
            scores = gated_symile_scores(pool, rows, terms, flags)
        return scores.to(candidates.device, candidates.dtype)


def objective_score(objective: str, model: nn.Module | None = None) -> ObjectiveScore:
    """`objective`'s score; gated-symile takes the gate from `model` (a model built for it:
    ValueError without one)."""
    function, _ = _known(objective)
    if function is not None:
        return ObjectiveScore(objective)
    gate = getattr(model, "gate", None) if model is not None else None
    if gate is None:
        raise ValueError(
            f"{objective}'s score needs the run's gate: pass the run's model "
            "(objective_score(objective, loaded.model))"
        )
    return ObjectiveScore(objective, gate)


def labs_missing_flags(labs_missing: Tensor) -> Tensor:
    """[Q, 2] bool missing flags of (ECG, labs) queries from labs_missing [Q] bool: the ECG is
    never flagged."""
    return torch.stack([torch.zeros_like(labs_missing, dtype=torch.bool), labs_missing], dim=1)
