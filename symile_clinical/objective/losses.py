"""Contrastive losses: Symile (any number of modalities) and pairwise CLIP, the paper's baseline.

Symile scores a tuple of one row per modality by the multilinear inner product
MIP(a, b, c) = sum_d a_d b_d c_d. Each modality in turn is the anchor: for anchor row a, the
positive is the tuple (a, a, ..., a) and the loss is the cross-entropy of the positive against
negatives built from the other modalities' rows. The result is the mean over anchors of the
mean cross-entropy, exactly as `symile.Symile` (the published reference, 0.1.0) computes it:

- negatives="n": per anchor modality, each non-anchor modality's rows are shuffled by a
  permutation drawn from `generator`, so anchor row a meets B - 1 shuffled tuples besides its
  positive (the positive sits on the diagonal of the B x B logits).
- negatives="n_squared": anchor row a meets every combination of the non-anchor rows.
- negatives="conditional" (this project's, not the reference's): only the last modality's
  rows are replaced. Tuple a's first M - 1 rows (the query: ECG and labs) meet every row k of
  the last (the CXR), and each last-modality row meets every tuple's query: symmetric InfoNCE
  between the query vector x_a * y_a and z_k, the negatives retrieval itself meets. Its
  optimum is the same MIP up to a per-query constant (log p(z | x, y) / p(z) differs from
  Symile's total-correlation target by the x-y PMI), so the ranking of candidates for a
  query is the same; what changes is that no gradient is spent telling real ECG-labs pairs
  from shuffled ones.

For three modalities every anchor's "n_squared" loss is a log-sum-exp over a different axis of
the same tensor T[i, j, k] = MIP(x_i, y_j, z_k). We compute T once, a few rows of i at a time,
reduce it along all three axes with a streaming log-sum-exp, and recompute it in backward, so
memory is O(chunk * B^2) rather than the reference's B^2 x d products and B x B^2 logits per
anchor, and the forward pass forms T once instead of three times (with the recomputation, four
B^3 x d matrix products in all against the reference's nine). The same code handles any M
(the chunk then holds B^(M-1) entries per row of the first modality). With M = 2 both modes
are pairwise CLIP: the shuffle is unnecessary (the B - 1 other rows are exactly the negatives),
and `symile_loss` equals `clip_loss`.

Distributed: when torch.distributed is initialised, every rank passes its local [B, d] rows
(the same B on every rank); the losses gather all ranks' rows with gradients
(`gather.gather_with_grad`) and each rank scores only its own anchor rows against the
global batch (for "n_squared", each rank computes the slice of T that holds its own rows of the
first modality, and the ranks combine the other axes' log-sum-exps, so the work is split W ways).
The returned value is the loss of the whole global batch on every rank, and its gradient, once
DistributedDataParallel averages over ranks, is that of one process computing the loss on the
concatenated batch (see `objective/gather.py`). For "n", permutations are drawn over the global
batch, so every rank must pass a generator seeded identically: the draws then equal those of a
single process on the concatenated batch with the same seed.

All arithmetic runs in float32 (float64 if any input is float64) with autocast disabled, so
bf16/fp16 embeddings from an autocast forward are scored and accumulated in float32; gradients
flow back to the embeddings in their own dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from symile_clinical.objective.gather import (
    check_same_rows,
    gather_with_grad,
    in_process_group,
    world_info,
)

Negatives = Literal["n", "n_squared", "conditional"]

# Entries of T held at once per chunk (2^20 float32 = 4 MiB; a few temporaries of that size live
# together), and at least one row of the first modality. On an idle CPU anything from 2^16 to
# 2^21 runs equally fast (each chunk is still one efficient matrix product); fewer, larger chunks
# mean fewer small parallel ops, which suffer most when other processes compete for the cores.
CHUNK_ELEMENTS = 1 << 20

# exp(scale * T) needs no max-shift when |scale * T| <= this bound: a sum of B^(M-1) terms of
# at most e^30 stays far inside float32's range (e^88) and every term at least e^-30 stays far
# above its smallest normal number, so each keeps full relative precision.
UNSHIFTED_EXP_BOUND = {torch.float32: 30.0, torch.float64: 300.0}


def symile_loss(
    embeddings: Sequence[Tensor],
    logit_scale: Tensor | float,
    negatives: Negatives = "n",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Symile loss (scalar) of M >= 2 modalities' embeddings, each [B, d], rows aligned.

    logit_scale: the already exponentiated temperature (0-dim tensor or float).
    negatives: "n" (B - 1 shuffled negatives per positive), "n_squared" (all combinations) or
    "conditional" (only the last modality's rows replaced; see the module docstring).
    generator: a seeded torch.Generator; needed only for "n" with M >= 3, where permutations
    are drawn from it (under torch.distributed, seed it identically on every rank).
    """
    embs, scale = prepare_embeddings(embeddings, logit_scale)
    if negatives not in ("n", "n_squared", "conditional"):
        raise ValueError(f"negatives must be 'n', 'n_squared' or 'conditional', got {negatives!r}")
    with torch.autocast(device_type=embs[0].device.type, enabled=False):
        offset, everyone = gather_rows(embs)
        if len(embs) == 2:
            loss = _clip_pair(embs, everyone, scale, offset)
        elif negatives == "n":
            loss = _symile_n(embs, everyone, scale, offset, generator)
        elif negatives == "conditional":
            loss = _symile_conditional(embs, everyone, scale, offset)
        else:
            loss = _symile_n_squared(embs, everyone, scale, offset)
    return as_global_value(loss)


def clip_loss(embeddings: Sequence[Tensor], logit_scale: Tensor | float) -> Tensor:
    """Pairwise CLIP loss (scalar): symmetric InfoNCE for every pair of the M >= 2 modalities
    ([B, d] each), averaged over the M(M-1)/2 pairs. logit_scale is already exponentiated."""
    embs, scale = prepare_embeddings(embeddings, logit_scale)
    with torch.autocast(device_type=embs[0].device.type, enabled=False):
        offset, everyone = gather_rows(embs)
        pairs = list(itertools.combinations(range(len(embs)), 2))
        total = sum(
            _clip_pair([embs[p], embs[q]], [everyone[p], everyone[q]], scale, offset)
            for p, q in pairs
        )
        loss = total / len(pairs)
    return as_global_value(loss)


def prepare_embeddings(
    embeddings: Sequence[Tensor], logit_scale: Tensor | float
) -> tuple[list[Tensor], Tensor]:
    """Validate shapes; promote to float32 (float64 if any input is) on one device."""
    embs = list(embeddings)
    if len(embs) < 2:
        raise ValueError(f"need at least 2 modalities, got {len(embs)}")
    shape = embs[0].shape
    if len(shape) != 2 or any(e.shape != shape for e in embs):
        raise ValueError(f"embeddings must all be [B, d], got {[tuple(e.shape) for e in embs]}")
    dtype = torch.float64 if any(e.dtype == torch.float64 for e in embs) else torch.float32
    embs = [e.to(dtype) for e in embs]
    scale = torch.as_tensor(logit_scale, device=embs[0].device).to(dtype)
    if scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(scale.shape)}")
    return embs, scale.reshape(())


def gather_rows(embs: list[Tensor]) -> tuple[int, list[Tensor]]:
    """(global index of this rank's first row, every rank's rows of each modality)."""
    if not in_process_group():
        return 0, embs
    rank, _ = world_info()
    check_same_rows(embs[0].shape[0], embs[0].device)
    return rank * embs[0].shape[0], [gather_with_grad(e) for e in embs]


def as_global_value(loss: Tensor) -> Tensor:
    """Under torch.distributed, shift the local loss's value to the global mean, keeping its
    gradient local (DDP averages gradients; see objective/gather.py)."""
    if not in_process_group():
        return loss
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    return loss + (mean / world_info().world_size - loss.detach())


def _cross_entropy_at(logits: Tensor, offset: int) -> Tensor:
    """Mean cross-entropy of [B_local, ...] logits whose positive for local row a is column
    offset + a."""
    labels = torch.arange(logits.shape[0], device=logits.device) + offset
    return F.cross_entropy(logits, labels)


def _clip_pair(local: list[Tensor], everyone: list[Tensor], scale: Tensor, offset: int) -> Tensor:
    """Symmetric InfoNCE between two modalities: local anchors against all ranks' rows."""
    x, y = local
    x_all, y_all = everyone
    return (
        _cross_entropy_at(scale * (x @ y_all.T), offset)
        + _cross_entropy_at(scale * (y @ x_all.T), offset)
    ) / 2


def draw_permutations(
    num_modalities: int, batch: int, generator: torch.Generator
) -> list[list[Tensor]]:
    """The permutations "n" mode uses: perms[m][n] shuffles the n-th non-anchor modality (in
    index order, skipping m) when m is the anchor; drawn in that order, each torch.randperm(batch).

    This is the order of the reference implementation's draws, so with a CPU generator seeded s
    the permutations equal those `symile.Symile` draws after torch.manual_seed(s).
    """
    return [
        [
            torch.randperm(batch, generator=generator, device=generator.device)
            for _ in range(num_modalities - 1)
        ]
        for _ in range(num_modalities)
    ]


def _symile_n(
    local: list[Tensor],
    everyone: list[Tensor],
    scale: Tensor,
    offset: int,
    generator: torch.Generator | None,
) -> Tensor:
    """O(B^2) negatives: positive on the diagonal, shuffled non-anchor tuples elsewhere."""
    if generator is None:
        raise ValueError(
            "negatives='n' with 3 or more modalities shuffles rows: pass a seeded "
            "torch.Generator (seeded identically on every rank when distributed)"
        )
    rows, batch = local[0].shape[0], everyone[0].shape[0]
    perms = draw_permutations(len(local), batch, generator)
    positive = torch.stack(local).prod(dim=0).sum(dim=1)  # [B_local] MIP of each positive tuple
    is_positive = (
        torch.arange(batch, device=positive.device)[None, :]
        == torch.arange(rows, device=positive.device)[:, None] + offset
    )
    losses = []
    for m, anchor in enumerate(local):
        others = [e for j, e in enumerate(everyone) if j != m]
        shuffled = others[0][perms[m][0].to(anchor.device)]
        for other, perm in zip(others[1:], perms[m][1:], strict=True):
            shuffled = shuffled * other[perm.to(anchor.device)]
        logits = torch.where(is_positive, positive[:, None], anchor @ shuffled.T)
        losses.append(_cross_entropy_at(scale * logits, offset))
    return torch.stack(losses).mean()


def _symile_conditional(
    local: list[Tensor], everyone: list[Tensor], scale: Tensor, offset: int
) -> Tensor:
    """Only the last modality is replaced: each tuple's first M - 1 rows against every row of
    the last (and back), the negatives retrieval itself meets."""
    query = torch.stack(local[:-1]).prod(dim=0)
    query_all = torch.stack(everyone[:-1]).prod(dim=0)
    return _clip_pair([query, local[-1]], [query_all, everyone[-1]], scale, offset)


def _symile_n_squared(
    local: list[Tensor], everyone: list[Tensor], scale: Tensor, offset: int
) -> Tensor:
    """All combinations of non-anchor rows as negatives, never materialising the logits."""
    positive = scale * torch.stack(local).prod(dim=0).sum(dim=1)  # [B_local]
    # One pass over T = MIP(local e_0 rows, all rows of the others) gives every anchor's
    # log-sum-exp; under torch.distributed the ranks' slices of T are combined inside.
    lses = _NSquaredLogSumExp.apply(scale, in_process_group(), local[0], *everyone[1:])
    mine = slice(offset, offset + local[0].shape[0])
    per_anchor = [lses[0].mean()] + [lse[mine].mean() for lse in lses[1:]]
    return torch.stack(per_anchor).mean() - positive.mean()


def _logsumexp_over_ranks(partial: Tensor) -> Tensor:
    """log sum_r exp(partial_r) elementwise over the ranks' tensors of the same shape."""
    peak = partial.clone()
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    total = torch.exp(partial - peak)
    dist.all_reduce(total)
    return peak + total.log()


def _sum_over_ranks(tensor: Tensor) -> Tensor:
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def _logit_bound(scale: Tensor, embs: Sequence[Tensor]) -> float:
    """An upper bound on |scale * MIP| over all tuples of rows (Hölder with exponent M:
    |sum_d prod_m e_md| <= prod_m ||e_m||_M)."""
    bound = abs(float(scale.detach()))
    for e in embs:
        bound *= float(torch.linalg.vector_norm(e.detach(), ord=len(embs), dim=1).max())
    return bound


def _chunk_prefix(embs: Sequence[Tensor], rows: slice) -> Tensor:
    """Element-wise products of rows of the first M-1 modalities, in T's index order, for the
    chunk `rows` of the first: [c * B_1 * ... * B_{M-2}, d]. T's chunk is prefix @ e_last.T."""
    prefix = embs[0][rows]
    for e in embs[1:-1]:
        prefix = (prefix[:, None, :] * e[None, :, :]).reshape(-1, prefix.shape[-1])
    return prefix


def _chunked_logits(
    embs: Sequence[Tensor], scaled_last: Tensor
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """(rows, prefix, scale * T[rows]) for successive chunks of e_0's rows, each chunk of T
    [c, B_1, ..., B_{M-1}] holding about CHUNK_ELEMENTS entries. Every chunk is written into
    the same buffer (on CPU a fresh multi-MiB tensor per chunk costs page faults comparable to
    the arithmetic), so use one chunk's logits before asking for the next."""
    plane = [e.shape[0] for e in embs[1:]]
    per_row, n = math.prod(plane), embs[0].shape[0]
    step = max(1, min(n, CHUNK_ELEMENTS // per_row))
    buffer = scaled_last.new_empty(step * per_row)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        prefix = _chunk_prefix(embs, rows)
        logits = buffer[: prefix.shape[0] * plane[-1]].view(prefix.shape[0], plane[-1])
        torch.mm(prefix, scaled_last.T, out=logits)
        yield rows, prefix, logits.view(-1, *plane)


def _axes_except(axis: int, ndim: int) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a != axis)


def _broadcast_on(vector: Tensor, axis: int, ndim: int) -> Tensor:
    """[n] -> shape with n on `axis` and 1 elsewhere, to broadcast against a chunk of T."""
    shape = [1] * ndim
    shape[axis] = vector.shape[0]
    return vector.view(shape)


def _contract(upstream: Tensor, axis: int, factors: Sequence[Tensor]) -> Tensor:
    """Gradient for the factor on T's `axis`, [n_axis, d]: the sum over T's other axes of
    upstream [n_0, ..., n_{k-1}, d] times every other factor [n_j, d] broadcast on axis j."""
    ndim = upstream.dim() - 1
    product = upstream
    for j, factor in enumerate(factors):
        if j != axis:
            shape = [1] * ndim + [factor.shape[1]]
            shape[j] = factor.shape[0]
            product = product * factor.view(shape)
    others = _axes_except(axis, ndim)
    return product.sum(dim=others) if others else product


class _NSquaredLogSumExp(torch.autograd.Function):
    """lse_m[a] = log of the sum over all other axes of exp(scale * T) at index a of axis m,
    where T[i_0, ..., i_{M-1}] = MIP(e_0[i_0], ..., e_{M-1}[i_{M-1}]).

    forward(scale, sharded, *embs) returns (lse_0, ..., lse_{M-1}). T is formed a chunk of e_0's
    rows at a time, as one matrix product prefix @ (scale * e_last).T: lse_0 of those rows is
    complete within the chunk, the other axes' sums accumulate across chunks. Backward
    recomputes each chunk, weighs it by W = dLoss/d(scale * T) = sum_m g_m * softmax_m(scale * T)
    and turns W into gradients with two matrix products; nothing of size B^M is ever held.

    When the logits are known to be small (|scale * T| <= UNSHIFTED_EXP_BOUND), exp needs no
    shift and one exp per entry serves every axis; otherwise each axis gets its own max-shifted
    log-sum-exp (exact at any scale, about twice the work).

    sharded (under torch.distributed): e_0 holds this rank's rows only and the others every
    rank's rows, so each rank computes its own slice of T; the other axes' log-sum-exps are
    combined over ranks (identical on every rank), and backward sums the ranks' upstream
    gradients of those axes, since every rank's slice contributes to every rank's anchors.
    """

    @staticmethod
    def forward(ctx: Any, scale: Tensor, sharded: bool, *embs: Tensor) -> tuple[Tensor, ...]:
        ndim = len(embs)
        unshifted = _logit_bound(scale, embs) <= UNSHIFTED_EXP_BOUND[scale.dtype]
        new = {"dtype": scale.dtype, "device": scale.device}
        with torch.autocast(device_type=scale.device.type, enabled=False):
            scaled_last = embs[-1] * scale
            lses = [torch.empty(embs[0].shape[0], **new)]
            if unshifted:
                # Sums of exp over axis 0, kept for the other axes' log-sum-exps.
                tail = torch.zeros([e.shape[0] for e in embs[1:]], **new)
                for rows, _, logits in _chunked_logits(embs, scaled_last):
                    exp = logits.exp_()
                    lses[0][rows] = exp.flatten(1).sum(dim=1).log()
                    tail += exp.sum(dim=0)
                lses += [tail.sum(dim=_axes_except(m, ndim - 1)).log() for m in range(ndim - 1)]
            else:
                lses += [torch.full((e.shape[0],), -torch.inf, **new) for e in embs[1:]]
                for rows, _, logits in _chunked_logits(embs, scaled_last):
                    lses[0][rows] = logits.flatten(1).logsumexp(dim=1)
                    for m in range(1, ndim):
                        part = logits.logsumexp(dim=_axes_except(m, ndim))
                        lses[m] = torch.logaddexp(lses[m], part)
            if sharded:
                lses[1:] = _logsumexp_over_ranks(torch.stack(lses[1:])).unbind()
        ctx.unshifted, ctx.sharded, ctx.num_embs = unshifted, sharded, ndim
        ctx.save_for_backward(scale, *embs, *lses)
        return tuple(lses)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        ndim = ctx.num_embs
        scale, *saved = ctx.saved_tensors
        embs, lses = saved[:ndim], saved[ndim:]
        last = embs[-1]
        with torch.autocast(device_type=scale.device.type, enabled=False):
            if ctx.sharded:
                grads = (grads[0], *_sum_over_ranks(torch.stack(grads[1:])).unbind())
            scaled_last = last * scale
            grad_scaled_last = torch.zeros_like(last)
            grad_heads = [torch.zeros_like(e) for e in embs[:-1]]
            if ctx.unshifted:
                # softmax_m = exp(scale*T) * exp(-lse_m): fold g_m * exp(-lse_m) into one
                # coefficient per axis; those of the non-first axes add up once for all chunks.
                coeffs = [g * torch.exp(-lse) for g, lse in zip(grads, lses, strict=True)]
                tail = sum(
                    (_broadcast_on(c, m, ndim - 1) for m, c in enumerate(coeffs[1:])),
                    torch.zeros(
                        [e.shape[0] for e in embs[1:]], dtype=scale.dtype, device=scale.device
                    ),
                )
                coeff_buffer = torch.empty(0, dtype=scale.dtype, device=scale.device)
            for rows, prefix, logits in _chunked_logits(embs, scaled_last):
                if ctx.unshifted:
                    if coeff_buffer.numel() == 0:  # the first chunk is the largest
                        coeff_buffer = torch.empty_like(logits)
                    coeff = torch.add(
                        tail,
                        _broadcast_on(coeffs[0][rows], 0, ndim),
                        out=coeff_buffer[: logits.shape[0]],
                    )
                    weight = logits.exp_().mul_(coeff)
                else:
                    weight = _broadcast_on(grads[0][rows], 0, ndim) * torch.exp(
                        logits - _broadcast_on(lses[0][rows], 0, ndim)
                    )
                    for m in range(1, len(lses)):
                        weight += _broadcast_on(grads[m], m, ndim) * torch.exp(
                            logits - _broadcast_on(lses[m], m, ndim)
                        )
                weight = weight.view(prefix.shape[0], last.shape[0])  # W, per (prefix, last) row
                grad_scaled_last += weight.T @ prefix
                upstream = (weight @ scaled_last).view(*logits.shape[:-1], -1)  # d/d prefix
                factors = [embs[0][rows], *embs[1:-1]]
                for m in range(ndim - 1):
                    contribution = _contract(upstream, m, factors)
                    if m == 0:
                        grad_heads[0][rows] += contribution
                    else:
                        grad_heads[m] += contribution
            # scaled_last = scale * last: its gradient splits between scale and last.
            grad_scale = (grad_scaled_last * last).sum()
            grad_last = grad_scaled_last * scale
        return (grad_scale, None, *grad_heads, grad_last)
