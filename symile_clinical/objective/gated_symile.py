"""Gated Symile (Rheude et al., arXiv 2604.05834): Symile with a per-candidate gate that pulls
unreliable or missing modalities toward learnt neutral vectors, with an explicit NULL option.

For a candidate row c of the target modality t and a query tuple (e_m for m != t):
  s_m  = <q_t(c), k_m(e_m)> / T           the candidate asks, each other modality answers
  s_0  = null_t(c) / T                     the NULL option ("trust none of them")
  w_m  = softmax(s_1, ..., s_{M-1}, s_0)_m  the trust given to modality m (the NULL takes the rest)
  g_m  = (1 - a) e_m + a (w_m e_m + (1 - w_m) n_m) = (1 - b_m) e_m + b_m n_m,  b_m = a (1 - w_m)
  score = d^((M-1)/2) * MIP(g_1 / ||g_1||, ..., g_{M-1} / ||g_{M-1}||, c / ||c||)
with n_m the learnt unit neutral vector of modality m, a in (0, 1) the gate strength and T the
gate temperature (models/gating.py holds the parameters). d^((M-1)/2) is the paper's
variance scaling: the MIP of M random unit vectors has standard deviation about d^-((M-1)/2).
The loss treats each modality in turn as the target: its rows are the candidates, every other
modality's rows form the query, and the cross-entropy over the candidates of the global batch
picks the positive; the mean over targets is the loss (the paper's candidate-dependent "pair"
training with every other row of the batch as negative instead of K sampled ones).

Missing modalities (this project's reading, the paper states no rule): a row flagged missing
for a query modality has b_m = 1, i.e. that modality is replaced by its neutral vector outright
(the NULL option taken with certainty, whatever the gate strength); a row flagged missing for
the target modality gives no positive term for that target (it still serves as a negative).
`missing_from_labs_observed` flags the labs of a row with no observed lab. Without flags the gate
learns on its own to trust sparse labs less: the second way to handle missing labs beside the
labs encoder's observed mask.

The gated vectors' norms come from scalars (||g||^2 = (1-b)^2 ||e||^2 + 2b(1-b)<e, n> +
b^2 ||n||^2) and the MIP expands over which factors are neutral (2^(M-1) matrix products), so
nothing of size Q x N x d is formed.

Retrieval: the gate depends on the candidate, so the score is not an inner product <q(e, l), c>
(`score_is_inner_product` is False): an inner-product index cannot serve it exactly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from symile_clinical.objective.gather import gather_with_grad, world_info
from symile_clinical.objective.losses import as_global_value, gather_rows, prepare_embeddings
from symile_clinical.objective.similarity import check_score_inputs

NORM_EPS = 1e-6

# The gate weights depend on the candidate: no single query vector q with score <q, c>.
score_is_inner_product = False


class GateTerms(Protocol):
    """The gate's output (models.gating.GateOutput has these fields)."""

    keys: Sequence[Tensor | None]
    queries: Sequence[Tensor | None]
    null_logits: Sequence[Tensor | None]
    neutral: Tensor
    temperature: Tensor
    strength: Tensor


def variance_scale(dim: int, num_modalities: int) -> float:
    """The paper's variance scaling d^((M-1)/2) of the MIP of M unit vectors in R^d."""
    return math.pow(dim, (num_modalities - 1) / 2)


def missing_from_labs_observed(
    labs_observed: Tensor, labs_index: int = 1, num_modalities: int = 3
) -> Tensor:
    """[B, M] bool, True = modality missing: the labs column is True for rows of labs_observed
    ([B, L], 1 = observed) with no observed lab; every other modality is present."""
    missing = torch.zeros(
        labs_observed.shape[0], num_modalities, dtype=torch.bool, device=labs_observed.device
    )
    missing[:, labs_index] = labs_observed.sum(dim=1) == 0
    return missing


def gated_mip(
    queries: Sequence[Tensor],
    query_keys: Sequence[Tensor],
    neutral: Sequence[Tensor],
    candidates: Tensor,
    candidate_queries: Tensor,
    candidate_null_logits: Tensor,
    temperature: Tensor,
    strength: Tensor,
    missing: Tensor | None = None,
) -> Tensor:
    """Scaled gated MIP [Q, N] of every query tuple against every candidate (module docstring).

    queries: M - 1 tensors [Q, d]; query_keys: their gate keys [Q, k]; neutral: their neutral
    vectors [d]; candidates [N, d] with gate queries [N, k] and NULL logits [N]; missing:
    [Q, M - 1] bool (True = that query modality is missing in that row) or None.
    """
    temperature = temperature.to(candidates.dtype)
    logits = [keys @ candidate_queries.T / temperature for keys in query_keys]  # [Q, N] each
    null = (candidate_null_logits / temperature)[None, :].expand_as(logits[0])
    trust = torch.softmax(torch.stack([*logits, null]), dim=0)[:-1]  # [M-1, Q, N]
    pull = strength.to(candidates.dtype) * (1 - trust)
    if missing is not None:
        pull = torch.where(missing.T[:, :, None], torch.ones_like(pull), pull)
    norms = []
    for e, n, b in zip(queries, neutral, pull, strict=True):
        ee, en, nn_ = (e * e).sum(1)[:, None], (e @ n)[:, None], (n * n).sum()
        squared = (1 - b) ** 2 * ee + 2 * b * (1 - b) * en + b**2 * nn_
        norms.append(squared.clamp_min(NORM_EPS**2).sqrt())
    unit_candidates = F.normalize(candidates, dim=1, eps=NORM_EPS)
    total = torch.zeros_like(pull[0])
    # MIP(prod_m ((1-b_m) e_m + b_m n_m), c): one term per choice of neutral factors.
    for neutral_factor in itertools.product((False, True), repeat=len(queries)):
        vector, weight = None, torch.ones_like(pull[0])
        for m, take_neutral in enumerate(neutral_factor):
            factor = neutral[m][None, :] if take_neutral else queries[m]
            vector = factor if vector is None else vector * factor
            weight = weight * (pull[m] if take_neutral else 1 - pull[m])
        total = total + weight * (vector @ unit_candidates.T)
    scale = variance_scale(candidates.shape[1], len(queries) + 1)
    return scale * total / torch.stack(norms).prod(dim=0)


def gated_symile_scores(
    candidates: Tensor,
    queries: Sequence[Tensor],
    gate: GateTerms,
    missing: Tensor | None = None,
) -> Tensor:
    """Gated Symile retrieval scores [Q, N] of candidates [N, d] (the last modality) for the
    query tuples (M - 1 tensors [Q, d]); gate = the gate run on [*queries, candidates];
    missing: [Q, M - 1] bool or None. Higher is better."""
    check_score_inputs(candidates, queries)
    target = len(queries)
    if len(gate.keys) != target + 1:
        raise ValueError(f"the gate has {len(gate.keys)} modalities, expected {target + 1}")
    keys = [gate.keys[m] for m in range(target)]
    if any(k is None for k in keys) or gate.queries[target] is None:
        raise ValueError("run the gate on every query modality and on the candidates")
    return gated_mip(
        queries,
        keys,
        [gate.neutral[m] for m in range(target)],
        candidates,
        gate.queries[target],
        gate.null_logits[target],
        gate.temperature,
        gate.strength,
        missing,
    )


def gated_symile_loss(
    embeddings: Sequence[Tensor],
    logit_scale: Tensor | float,
    gate: GateTerms,
    missing: Tensor | None = None,
) -> Tensor:
    """Gated Symile loss (scalar) of M >= 2 modalities' rows ([B, d] each, aligned).

    logit_scale: already exponentiated, multiplies the scaled gated MIP. gate: the gate run on
    these rows (models.gating.ModalityGate(embeddings)). missing: [B, M] bool (True = missing,
    e.g. `missing_from_labs_observed`) or None. Works under DDP as `losses.symile_loss`: each
    rank's rows are queries against every rank's candidates.
    """
    embs, scale = prepare_embeddings(embeddings, logit_scale)
    count, batch, dtype = len(embs), embs[0].shape[0], embs[0].dtype
    if len(gate.keys) != count or any(k is None for k in gate.keys):
        raise ValueError(f"the gate must be run on all {count} modalities of the batch")
    if missing is None:
        missing = torch.zeros(batch, count, dtype=torch.bool, device=embs[0].device)
    if missing.shape != (batch, count):
        raise ValueError(f"missing must be [{batch}, {count}], got {tuple(missing.shape)}")
    _, world = world_info()
    with torch.autocast(device_type=embs[0].device.type, enabled=False):
        offset, everyone = gather_rows(embs)
        asks = [gather_with_grad(q.to(dtype)) for q in gate.queries]
        nulls = [gather_with_grad(n.to(dtype)) for n in gate.null_logits]
        keys = [k.to(dtype) for k in gate.keys]
        neutral = gate.neutral.to(dtype)
        labels = torch.arange(batch, device=embs[0].device) + offset
        per_target = []
        for t in range(count):
            others = [m for m in range(count) if m != t]
            logits = scale * gated_mip(
                [embs[m] for m in others],
                [keys[m] for m in others],
                [neutral[m] for m in others],
                everyone[t],
                asks[t],
                nulls[t],
                gate.temperature,
                gate.strength,
                missing[:, others],
            )
            present = ~missing[:, t]
            present_everywhere = _summed(present.sum())
            if present_everywhere == 0:
                continue
            terms = F.cross_entropy(logits, labels, reduction="none")
            # Mean over the global batch's rows with the target present; times world because
            # DDP averages the ranks' gradients (see losses.as_global_value).
            per_target.append(world * (terms * present).sum() / present_everywhere)
        if not per_target:
            raise ValueError("every row of the global batch is flagged missing in every modality")
        loss = torch.stack(per_target).mean()
    return as_global_value(loss)


def _summed(count: Tensor) -> int:
    """An integer summed over ranks (itself when not distributed)."""
    if world_info().world_size == 1:
        return int(count)
    total = count.detach().clone().to(torch.int64)
    torch.distributed.all_reduce(total)
    return int(total)
