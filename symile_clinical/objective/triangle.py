"""TRIANGLE (NeurIPS 2025, arXiv 2509.24734): the area of the triangle three embeddings span.

For exactly three L2-normalised modality vectors a, b, c (points on the unit hypersphere), the
similarity is the area of the triangle with those vertices:
Area(a, b, c) = 1/2 sqrt(||u||^2 ||v||^2 - (u . v)^2), u = b - a, v = c - a,
0 when the three coincide. It replaces cosine similarity in a contrastive loss: logits
-Area / tau between an anchor (text in the paper; the CXR here, the candidate) and the data
tuple of the other two (ECG, labs), in both directions, as GRAM does (`anchor_contrast.py`).

Assumptions: the area keeps its square root, as the paper's definition has it (the released
code drops it and uses ||u||^2 ||v||^2 - (u . v)^2 over 2); sqrt(max(x, 0) + AREA_EPS) keeps the
gradient finite where the triangle degenerates. The paper's optional data-text matching term is
GRAM's (`gram.data_anchor_matching_loss`) and is not repeated here.

Retrieval score of candidate x for query (e, l): -Area(e, l, x). With unit vectors,
4 Area^2 = 4 (1 - <e, l>)(1 - <e, x>) - (<l - e, x> + 1 - <e, l>)^2: linear and quadratic terms
in x, so the score is not an inner product <q(e, l), x> (`score_is_inner_product` is False). It
is a function of the three pairwise cosines only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from symile_clinical.objective.anchor_contrast import anchor_contrastive_loss
from symile_clinical.objective.similarity import check_score_inputs

AREA_EPS = 1e-12

# -Area(e, l, x) has a quadratic term in x: no single query vector q with score <q, x>.
score_is_inner_product = False


def triangle_area(data: Sequence[Tensor], anchors: Tensor) -> Tensor:
    """[n, k] areas: entry (i, j) = Area(data[0][i], data[1][i], anchors[j]) of the
    L2-normalised rows; data: exactly two [n, d] tensors, anchors: [k, d]."""
    if len(data) != 2:
        raise ValueError(f"TRIANGLE needs exactly three modalities, got {len(data) + 1}")
    a, b = (F.normalize(x, dim=1) for x in data)
    c = F.normalize(anchors, dim=1)
    # u = b - a per data row, v = c_j - a_i: every product from inner products of the rows.
    aa, bb, ab = (a * a).sum(1)[:, None], (b * b).sum(1)[:, None], (a * b).sum(1)[:, None]
    ac, bc, cc = a @ c.T, b @ c.T, (c * c).sum(1)[None, :]
    uu = bb - 2 * ab + aa
    vv = cc - 2 * ac + aa
    uv = bc - ac - ab + aa
    return 0.5 * torch.sqrt((uu * vv - uv * uv).clamp_min(0) + AREA_EPS)


def triangle_scores(candidates: Tensor, queries: Sequence[Tensor]) -> Tensor:
    """TRIANGLE retrieval scores [Q, N]: entry (b, k) = -Area(queries[0][b], queries[1][b],
    candidates[k]); candidates [N, d], queries two [Q, d] tensors. Higher is better."""
    check_score_inputs(candidates, queries)
    return -triangle_area(queries, candidates)


def triangle_loss(
    embeddings: Sequence[Tensor],
    logit_scale: Tensor | float,
    anchor: int = -1,
    label_smoothing: float = 0.0,
) -> Tensor:
    """TRIANGLE's area contrastive loss (scalar) of exactly 3 modalities' rows ([B, d] each;
    normalised here), the modality `anchor` against the pair of the others, both directions.
    logit_scale = 1 / tau, already exponentiated. Works under DDP as `losses.symile_loss`."""
    if len(embeddings) != 3:
        raise ValueError(f"TRIANGLE needs exactly three modalities, got {len(embeddings)}")
    return anchor_contrastive_loss(
        embeddings, logit_scale, triangle_area, anchor=anchor, label_smoothing=label_smoothing
    )
