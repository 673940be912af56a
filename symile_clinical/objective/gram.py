"""GRAM (Cicchetti et al., ICLR 2025, arXiv 2412.11959): the Gramian volume as alignment score.

For k L2-normalised modality vectors v_1..v_k (columns of A, [d, k]) the Gram matrix is
G = A^T A (G_pq = <v_p, v_q>) and the volume of the k-dimensional parallelotope they span is
Vol(v_1, ..., v_k) = sqrt(det G): 0 when the vectors are parallel, 1 when orthonormal. GRAM's
contrastive loss uses -Vol / tau as logit between an anchor and a data tuple (the other
modalities, moving together), in both directions (L_D2A + L_A2D) / 2; `anchor_contrast.py` holds
that structure. Here the anchor is the CXR (the candidate) and the data tuple is (ECG, labs).

The paper adds a data-anchor matching term (DAM): a head predicts whether an anchor and a data
tuple belong together, on the positive pair and on hard negatives sampled with probability
softmax(-Vol / tau) over the other rows (one negative anchor per data tuple, one negative data
tuple per anchor), trained with cross-entropy; `data_anchor_matching_loss` computes it for any
head. Assumptions where this project differs from the paper: the paper's head is a multimodal
transformer over the encoders' unpooled tokens, ours (models/matching.py) sees the pooled
embeddings; the paper's two-class softmax head is a one-logit sigmoid here (the same family);
the sampling weights' +1e-4 smoothing of the released code is left out.

Retrieval score of candidate c for query (e, l): -Vol(e, l, c). With Vol(e, l, c) =
Vol(e, l) * dist(c, span(e, l)) for unit vectors, ranking by it ranks by ||P c||^2, the squared
norm of c's projection on span(e, l): a quadratic form in c, not an inner product <q, c>, so an
inner-product index cannot serve it (`score_is_inner_product` is False). Every term is a function
of the three pairwise cosines.

Numerics: sqrt(max(det G, 0) + VOLUME_EPS), so that the gradient stays finite at perfect
alignment (det G = 0), where sqrt's derivative is infinite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from symile_clinical.objective.anchor_contrast import anchor_contrastive_loss, anchor_index
from symile_clinical.objective.losses import as_global_value, gather_rows, prepare_embeddings
from symile_clinical.objective.similarity import check_score_inputs

VOLUME_EPS = 1e-12

# -Vol(e, l, c) is a quadratic form in c: no single query vector q with score <q, c>.
score_is_inner_product = False


def gram_volume(data: Sequence[Tensor], anchors: Tensor) -> Tensor:
    """[n, k] volumes: entry (i, j) = Vol(data[0][i], ..., data[-1][i], anchors[j]) of the
    L2-normalised rows; data: one or more [n, d] tensors, anchors: [k, d]."""
    units = [F.normalize(x, dim=1) for x in data]
    anchor = F.normalize(anchors, dim=1)
    n, k = units[0].shape[0], anchor.shape[0]
    # <u_p, u_q> depends on the data row only; <u_p, anchor_j> on both.
    cross = [u @ anchor.T for u in units]
    rows = [
        [*((u * w).sum(dim=1)[:, None].expand(n, k) for w in units), cross[p]]
        for p, u in enumerate(units)
    ]
    rows.append([*cross, (anchor * anchor).sum(dim=1)[None, :].expand(n, k)])
    gram = torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)  # [n, k, M, M]
    return torch.sqrt(torch.linalg.det(gram).clamp_min(0) + VOLUME_EPS)


def gram_scores(candidates: Tensor, queries: Sequence[Tensor]) -> Tensor:
    """GRAM retrieval scores [Q, N]: entry (b, k) = -Vol(queries[0][b], ..., candidates[k]);
    candidates [N, d], queries one [Q, d] tensor per query modality. Higher is better."""
    check_score_inputs(candidates, queries)
    return -gram_volume(queries, candidates)


def gram_loss(
    embeddings: Sequence[Tensor],
    logit_scale: Tensor | float,
    anchor: int = -1,
    label_smoothing: float = 0.0,
) -> Tensor:
    """GRAM's volume contrastive loss (scalar), (L_D2A + L_A2D) / 2, of M >= 2 modalities' rows
    ([B, d] each; normalised here), the modality `anchor` against the tuple of the others.
    logit_scale = 1 / tau, already exponentiated. Works under DDP as `losses.symile_loss`."""
    return anchor_contrastive_loss(
        embeddings, logit_scale, gram_volume, anchor=anchor, label_smoothing=label_smoothing
    )


def data_anchor_matching_loss(
    embeddings: Sequence[Tensor],
    logit_scale: Tensor | float,
    match_logits: Callable[[list[Tensor]], Tensor],
    generator: torch.Generator,
    anchor: int = -1,
) -> Tensor:
    """GRAM's data-anchor matching term (scalar): binary cross-entropy of `match_logits` on the
    B positive tuples (label 1), B tuples whose anchor is a hard negative and B whose data tuple
    is one (label 0), negatives drawn from softmax(-logit_scale * Vol) over the other rows of
    the global batch.

    match_logits: rows of the M modalities in their order ([n, d] each) -> [n] logits.
    generator: a seeded torch.Generator, seeded identically on every rank under DDP (each rank
    draws the noise for the whole global batch and uses its rows, so the draws equal one
    process's). Sampling carries no gradient; the head and the embeddings it sees do.
    """
    embs, scale = prepare_embeddings(embeddings, logit_scale)
    a = anchor_index(anchor, len(embs))
    with torch.autocast(device_type=embs[0].device.type, enabled=False):
        offset, everyone = gather_rows(embs)
        data = [e for m, e in enumerate(embs) if m != a]
        data_all = [e for m, e in enumerate(everyone) if m != a]
        with torch.no_grad():
            anchor_logits = -scale * gram_volume(data, everyone[a])  # [B_local, B_global]
            data_logits = -scale * gram_volume(data_all, embs[a]).T
        wrong_anchor = sample_hard_negatives(anchor_logits, offset, generator)
        wrong_data = sample_hard_negatives(data_logits, offset, generator)
        rows = [
            torch.cat(
                [
                    embs[m],
                    everyone[m][wrong_anchor] if m == a else embs[m],
                    embs[m] if m == a else everyone[m][wrong_data],
                ]
            )
            for m in range(len(embs))
        ]
        logits = match_logits(rows).to(embs[0].dtype).reshape(-1)
        batch = embs[0].shape[0]
        labels = torch.cat([logits.new_ones(batch), logits.new_zeros(2 * batch)])
        loss = F.binary_cross_entropy_with_logits(logits, labels)
    return as_global_value(loss)


def sample_hard_negatives(logits: Tensor, offset: int, generator: torch.Generator) -> Tensor:
    """[B_local] column indices, row i's drawn from softmax(logits[i]) without its positive
    column offset + i (Gumbel-max); logits: [B_local, B_global]. The noise is drawn for all
    B_global rows so that a rank's draws equal those of one process on the global batch."""
    rows, columns = logits.shape
    if columns < 2:
        raise ValueError("hard negatives need a global batch of at least 2 rows")
    if offset + rows > columns:
        raise ValueError(f"rows {offset}..{offset + rows} exceed the {columns} columns")
    uniform = torch.rand(
        (columns, columns), generator=generator, dtype=torch.float64, device=generator.device
    )[offset : offset + rows].to(logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
    local = torch.arange(rows, device=logits.device)
    masked = logits.detach().to(torch.float64).clone()
    masked[local, local + offset] = -torch.inf
    return (masked + gumbel).argmax(dim=1)
