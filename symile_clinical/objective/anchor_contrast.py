"""Contrastive loss of data tuples against anchors under a geometric dissimilarity (GRAM, TRIANGLE).

GRAM (the volume the modality vectors span) and TRIANGLE (the area of the triangle they span)
score a tuple of one row per modality by a dissimilarity of its L2-normalised vectors: small when
the rows are aligned. Both papers single out one modality as the anchor (text in theirs) and let
the others form the data tuple, which moves as one: negatives replace the anchor row, or the
whole data tuple, never one data modality alone. Here the anchor is by default the last
modality (the CXR, which retrieval ranks) and the data tuple the others (the query: ECG, labs).

With D[i, j] = dissimilarity(data tuple i, anchor j) and logits -logit_scale * D, the loss is the
mean of two cross-entropies with the positives on the diagonal: data-to-anchor (row i of D
against every anchor; GRAM's L_D2A) and anchor-to-data (anchor j against every data tuple;
L_A2D). logit_scale is 1 / temperature, already exponentiated, as in `losses.clip_loss`.

Distributed: exactly as `losses.py` does it, each rank scores its own rows against every rank's
rows (gathered with gradients) and returns the global batch's loss, whose gradient, once DDP
averages over ranks, is that of one process on the concatenated batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from symile_clinical.objective.losses import as_global_value, gather_rows, prepare_embeddings

# (data tuple: M - 1 tensors [n, d], anchors [k, d]) -> [n, k] dissimilarities
Dissimilarity = Callable[[Sequence[Tensor], Tensor], Tensor]


def anchor_index(anchor: int, num_modalities: int) -> int:
    """The anchor's position in 0..M-1 (negative counts from the end); ValueError if out of
    range."""
    if not -num_modalities <= anchor < num_modalities:
        raise ValueError(f"anchor {anchor} out of range for {num_modalities} modalities")
    return anchor % num_modalities


def anchor_contrastive_loss(
    embeddings: Sequence[Tensor],
    logit_scale: Tensor | float,
    dissimilarity: Dissimilarity,
    anchor: int = -1,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Symmetric InfoNCE (scalar) of M >= 2 modalities' rows ([B, d] each, aligned) whose logits
    are -logit_scale * dissimilarity(data tuple i, anchor j); see the module docstring.

    label_smoothing: passed to cross_entropy (0 in the papers' equations; their released
    training configurations use 0.1).
    """
    embs, scale = prepare_embeddings(embeddings, logit_scale)
    a = anchor_index(anchor, len(embs))
    with torch.autocast(device_type=embs[0].device.type, enabled=False):
        offset, everyone = gather_rows(embs)
        data = [e for m, e in enumerate(embs) if m != a]
        data_all = [e for m, e in enumerate(everyone) if m != a]
        data_to_anchor = -scale * dissimilarity(data, everyone[a])  # [B_local, B_global]
        anchor_to_data = -scale * dissimilarity(data_all, embs[a]).T  # [B_local, B_global]
        labels = torch.arange(embs[0].shape[0], device=embs[0].device) + offset
        loss = (
            F.cross_entropy(data_to_anchor, labels, label_smoothing=label_smoothing)
            + F.cross_entropy(anchor_to_data, labels, label_smoothing=label_smoothing)
        ) / 2
    return as_global_value(loss)
