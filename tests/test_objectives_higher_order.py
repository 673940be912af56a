"""GRAM, TRIANGLE and gated Symile against naive references written from the papers' equations
(explicit loops over rows), gradients, invariances, and two gloo ranks against one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from models.gating import GateOutput, ModalityGate
from models.matching import MatchingHead
from symile_clinical.objective import gated_symile, gram, triangle
from symile_clinical.objective.gated_symile import (
    gated_symile_loss,
    gated_symile_scores,
    missing_from_labs_observed,
)
from symile_clinical.objective.gram import (
    data_anchor_matching_loss,
    gram_loss,
    gram_scores,
    gram_volume,
    sample_hard_negatives,
)
from symile_clinical.objective.similarity import mip_scores
from symile_clinical.objective.triangle import triangle_area, triangle_loss, triangle_scores

F64 = torch.float64


def _embeddings(m: int, b: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=F64).requires_grad_() for _ in range(m)]


def _scale(value: float = 2.3) -> torch.Tensor:
    return torch.tensor(value, dtype=F64, requires_grad=True)


def _grads(value: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [value.detach(), *torch.autograd.grad(value, inputs, allow_unused=True)]


def _assert_close(ours: list[torch.Tensor], expected: list[torch.Tensor], rtol=1e-10) -> None:
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-12)


# ---- naive references, one tuple at a time ------------------------------------------------


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt(sum(x * x for x in v))


def _naive_volume(*vectors: torch.Tensor) -> torch.Tensor:
    """sqrt(det G), G_pq = <v_p, v_q> of the unit vectors, the Gram matrix built entry by entry."""
    units = [_unit(v) for v in vectors]
    k = len(units)
    gram_matrix = torch.stack(
        [torch.stack([torch.dot(units[p], units[q]) for q in range(k)]) for p in range(k)]
    )
    return torch.sqrt(torch.linalg.det(gram_matrix))


def _naive_area(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Heron's formula from the side lengths of the triangle with the unit vectors as vertices."""
    a, b, c = _unit(a), _unit(b), _unit(c)
    x, y, z = torch.linalg.norm(b - a), torch.linalg.norm(c - a), torch.linalg.norm(c - b)
    s = (x + y + z) / 2
    return torch.sqrt(s * (s - x) * (s - y) * (s - z))


def _naive_anchor_loss(embs, scale, dissimilarity, anchor: int) -> torch.Tensor:
    """(L_D2A + L_A2D) / 2 with logits -scale * dissimilarity(tuple with the anchor row swapped)."""
    b = embs[0].shape[0]

    def value(i: int, j: int) -> torch.Tensor:  # data tuple i, anchor row j, modality order kept
        rows = [embs[m][j] if m == anchor else embs[m][i] for m in range(len(embs))]
        return -scale * dissimilarity(*rows)

    d2a = [torch.stack([value(i, j) for j in range(b)]) for i in range(b)]
    a2d = [torch.stack([value(i, j) for i in range(b)]) for j in range(b)]
    first = torch.stack([row.logsumexp(0) - row[i] for i, row in enumerate(d2a)]).mean()
    second = torch.stack([row.logsumexp(0) - row[j] for j, row in enumerate(a2d)]).mean()
    return (first + second) / 2


def _naive_gated_score(rows, keys, neutral, cand, cand_query, cand_null, temp, strength, missing):
    """The paper's gate for one query tuple and one candidate, vector by vector."""
    logits = [torch.dot(cand_query, k) / temp for k in keys] + [cand_null / temp]
    peak = max(float(x.detach()) for x in logits)
    exps = [torch.exp(x - peak) for x in logits]
    trust = [x / sum(exps) for x in exps[:-1]]
    gated = []
    for e, n, w, gone in zip(rows, neutral, trust, missing, strict=True):
        g = n if gone else (1 - strength) * e + strength * (w * e + (1 - w) * n)
        gated.append(_unit(g))
    product = _unit(cand)
    for g in gated:
        product = product * g
    d = cand.shape[0]
    return d ** (len(rows) / 2) * product.sum()


def _naive_gated_loss(embs, scale, out: GateOutput, missing) -> torch.Tensor:
    m, b = len(embs), embs[0].shape[0]
    per_target = []
    for t in range(m):
        others = [j for j in range(m) if j != t]
        terms = []
        for i in range(b):
            if missing[i][t]:
                continue
            logits = torch.stack(
                [
                    scale
                    * _naive_gated_score(
                        [embs[j][i] for j in others],
                        [out.keys[j][i] for j in others],
                        [out.neutral[j] for j in others],
                        embs[t][k],
                        out.queries[t][k],
                        out.null_logits[t][k],
                        out.temperature,
                        out.strength,
                        [missing[i][j] for j in others],
                    )
                    for k in range(b)
                ]
            )
            terms.append(logits.logsumexp(0) - logits[i])
        per_target.append(torch.stack(terms).mean())
    return torch.stack(per_target).mean()


def _gate(m: int, d: int, seed: int, strength: float = 0.4, key_dim: int = 3) -> ModalityGate:
    torch.manual_seed(seed)
    gate = ModalityGate(m, d, key_dim=key_dim, temperature_init=0.7).to(F64)
    with torch.no_grad():
        gate.strength_logit.fill_(strength)  # far from the closed start, so the gate matters
        gate.null_bias.copy_(torch.linspace(-0.5, 0.5, m, dtype=F64))
    return gate


# ---- GRAM ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "b", "d"), [(3, 4, 5), (3, 6, 3), (2, 3, 4), (4, 4, 6)])
def test_gram_volume_and_scores_equal_naive(m: int, b: int, d: int) -> None:
    *queries, cands = _embeddings(m, b, d, seed=m * b + d)
    cands = cands[: b - 1]
    ours = gram_scores(cands, queries)
    assert ours.shape == (b, b - 1)
    for i in range(b):
        for k in range(b - 1):
            expected = -_naive_volume(*(q[i] for q in queries), cands[k])
            torch.testing.assert_close(ours[i, k], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("m", "b", "d", "anchor"), [(3, 4, 5, -1), (3, 5, 4, 0), (4, 3, 6, 2)])
def test_gram_loss_equals_naive(m: int, b: int, d: int, anchor: int) -> None:
    embs, scale = _embeddings(m, b, d, seed=b + d), _scale()
    inputs = [scale, *embs]
    expected = _grads(_naive_anchor_loss(embs, scale, _naive_volume, anchor % m), inputs)
    _assert_close(_grads(gram_loss(embs, scale, anchor=anchor), inputs), expected, rtol=1e-8)


def test_gram_volume_is_symmetric_and_loss_ignores_data_order() -> None:
    ecg, labs, cxr = _embeddings(3, 5, 4, seed=3)
    # The diagonal holds each row's own tuple; any order of its three vectors gives its volume.
    base = torch.diagonal(gram_volume([ecg, labs], cxr))
    orders = [([labs, ecg], cxr), ([cxr, labs], ecg), ([ecg, cxr], labs), ([labs, cxr], ecg)]
    for data, anchor in orders:
        volume = torch.diagonal(gram_volume(data, anchor))
        torch.testing.assert_close(volume, base, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        gram_loss([ecg, labs, cxr], 1.7), gram_loss([labs, ecg, cxr], 1.7), rtol=1e-12, atol=0
    )


def test_data_anchor_matching_equals_naive_and_samples_its_distribution() -> None:
    torch.manual_seed(0)
    embs, scale = _embeddings(3, 4, 5, seed=9), _scale(1.5)
    head = MatchingHead(3, 5, hidden=6).to(F64)
    inputs = [scale, *embs, *head.parameters()]
    ours = data_anchor_matching_loss(embs, scale, head, torch.Generator().manual_seed(4))
    # The same draws, then binary cross-entropy term by term.
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        vol = torch.stack(
            [
                torch.stack([_naive_volume(embs[0][i], embs[1][i], embs[2][j]) for j in range(4)])
                for i in range(4)
            ]
        )
    wrong_anchor = sample_hard_negatives(-scale.detach() * vol, 0, generator)
    wrong_data = sample_hard_negatives(-scale.detach() * vol.T, 0, generator)
    terms = []
    for i in range(4):
        for rows, label in [
            ((embs[0][i], embs[1][i], embs[2][i]), 1.0),
            ((embs[0][i], embs[1][i], embs[2][wrong_anchor[i]]), 0.0),
            ((embs[0][wrong_data[i]], embs[1][wrong_data[i]], embs[2][i]), 0.0),
        ]:
            z = head([r[None, :] for r in rows])[0]
            terms.append(
                torch.nn.functional.softplus(-z) if label else torch.nn.functional.softplus(z)
            )
    expected = torch.stack(terms).mean()
    _assert_close(_grads(ours, inputs), _grads(expected, inputs))
    # Gumbel-max draws follow softmax(logits) over the columns other than the positive.
    logits = torch.tensor([[0.3, -1.0, 0.9, 0.0]], dtype=F64)
    generator = torch.Generator().manual_seed(1)
    draws = torch.stack([sample_hard_negatives(logits, 1, generator) for _ in range(4000)])
    frequencies = torch.bincount(draws.reshape(-1), minlength=4).to(F64) / draws.numel()
    expected_p = torch.softmax(logits[0].masked_fill(torch.arange(4) == 1, -torch.inf), 0)
    assert frequencies[1] == 0
    torch.testing.assert_close(frequencies, expected_p, atol=0.03, rtol=0)


# ---- TRIANGLE -----------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "d"), [(4, 5), (5, 3), (3, 8)])
def test_triangle_area_and_scores_equal_heron(b: int, d: int) -> None:
    ecg, labs, cxr = _embeddings(3, b, d, seed=b * d)
    ours = triangle_scores(cxr, [ecg, labs])
    for i in range(b):
        for k in range(b):
            expected = -_naive_area(ecg[i], labs[i], cxr[k])
            torch.testing.assert_close(ours[i, k], expected, rtol=1e-8, atol=1e-9)
    diag = torch.diagonal(triangle_area([ecg, labs], cxr))
    for data, anchor in [([labs, ecg], cxr), ([cxr, labs], ecg), ([ecg, cxr], labs)]:
        torch.testing.assert_close(
            torch.diagonal(triangle_area(data, anchor)), diag, rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize(("b", "d", "anchor"), [(4, 5, -1), (5, 4, 1), (3, 6, 0)])
def test_triangle_loss_equals_naive(b: int, d: int, anchor: int) -> None:
    embs, scale = _embeddings(3, b, d, seed=7 * b + d), _scale()
    inputs = [scale, *embs]
    expected = _grads(_naive_anchor_loss(embs, scale, _naive_area, anchor % 3), inputs)
    _assert_close(_grads(triangle_loss(embs, scale, anchor=anchor), inputs), expected, rtol=1e-8)
    swapped = [embs[1], embs[0], embs[2]]
    torch.testing.assert_close(
        triangle_loss(swapped, scale), triangle_loss(embs, scale), rtol=1e-12, atol=0
    )
    with pytest.raises(ValueError, match="exactly three"):
        triangle_loss(embs[:2], scale)


def test_degenerate_tuples_have_finite_gradients() -> None:
    """A perfectly aligned positive has volume and area 0, where sqrt's derivative is infinite."""
    base = _embeddings(1, 4, 5, seed=2)[0].detach()
    embs = [base.clone().requires_grad_() for _ in range(3)]
    for loss_fn in (gram_loss, triangle_loss):
        grads = torch.autograd.grad(loss_fn(embs, 3.0), embs)
        assert all(torch.isfinite(g).all() for g in grads)


# ---- gated Symile -------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "b", "d"), [(3, 4, 5), (3, 5, 3), (2, 3, 4), (4, 3, 4)])
def test_gated_scores_equal_naive(m: int, b: int, d: int) -> None:
    *queries, cands = _embeddings(m, b, d, seed=11 * m + b)
    cands = cands[:-1]
    gate = _gate(m, d, seed=m)
    out = gate([*queries, cands])
    missing = torch.zeros(b, m - 1, dtype=torch.bool)
    missing[1, -1] = True
    ours = gated_symile_scores(cands, queries, out, missing)
    assert ours.shape == (b, b - 1)
    for i in range(b):
        for k in range(b - 1):
            expected = _naive_gated_score(
                [q[i] for q in queries],
                [out.keys[j][i] for j in range(m - 1)],
                [out.neutral[j] for j in range(m - 1)],
                cands[k],
                out.queries[m - 1][k],
                out.null_logits[m - 1][k],
                out.temperature,
                out.strength,
                [bool(missing[i, j]) for j in range(m - 1)],
            )
            torch.testing.assert_close(ours[i, k], expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("m", "b", "d", "with_missing"), [(3, 4, 5, False), (3, 5, 4, True), (4, 3, 3, True)]
)
def test_gated_loss_equals_naive(m: int, b: int, d: int, with_missing: bool) -> None:
    embs, scale = _embeddings(m, b, d, seed=b * m + d), _scale(1.1)
    gate = _gate(m, d, seed=b)
    missing = torch.zeros(b, m, dtype=torch.bool)
    if with_missing:
        missing[0, 1] = missing[2, 1] = True  # labs missing in rows 0 and 2
    params = list(gate.parameters())
    inputs = [scale, *embs, *params]
    ours = _grads(gated_symile_loss(embs, scale, gate(embs), missing), inputs)
    expected = _grads(_naive_gated_loss(embs, scale, gate(embs), missing.tolist()), inputs)
    _assert_close(ours, expected, rtol=1e-9)
    assert all(torch.isfinite(g).all() for g in ours[1:])


def test_gated_closed_gate_is_scaled_normalised_mip() -> None:
    """With strength 0 the gate changes nothing: the score is d^((M-1)/2) times the MIP of the
    unit vectors, an inner product; any flagged-missing modality is its neutral vector."""
    ecg, labs, cxr = _embeddings(3, 4, 6, seed=5)
    gate = _gate(3, 6, seed=1, strength=-torch.inf)
    out = gate([ecg, labs, cxr])
    unit = [torch.nn.functional.normalize(x, dim=1) for x in (ecg, labs, cxr)]
    expected = 6.0 * mip_scores(unit[2], unit[:2])
    torch.testing.assert_close(
        gated_symile_scores(cxr, [ecg, labs], out), expected, rtol=1e-10, atol=1e-12
    )
    missing = torch.ones(4, 2, dtype=torch.bool) & torch.tensor([False, True])
    neutral_labs = out.neutral[1].expand(4, -1)
    expected = 6.0 * mip_scores(unit[2], [unit[0], neutral_labs])
    torch.testing.assert_close(
        gated_symile_scores(cxr, [ecg, labs], out, missing), expected, rtol=1e-10, atol=1e-12
    )


def test_gated_loss_invariant_to_row_and_modality_order() -> None:
    embs, scale = _embeddings(3, 5, 4, seed=8), _scale()
    gate = _gate(3, 4, seed=3)
    missing = torch.zeros(5, 3, dtype=torch.bool)
    missing[3, 1] = True
    loss = gated_symile_loss(embs, scale, gate(embs), missing)
    perm = torch.tensor([3, 0, 4, 1, 2])
    shuffled = [e[perm] for e in embs]
    torch.testing.assert_close(
        gated_symile_loss(shuffled, scale, gate(shuffled), missing[perm]), loss, rtol=1e-12, atol=0
    )
    # Swap ECG and labs together with everything the gate holds per modality.
    out, order = gate(embs), [1, 0, 2]
    swapped = GateOutput(
        keys=[out.keys[j] for j in order],
        queries=[out.queries[j] for j in order],
        null_logits=[out.null_logits[j] for j in order],
        neutral=out.neutral[order],
        temperature=out.temperature,
        strength=out.strength,
    )
    again = gated_symile_loss([embs[j] for j in order], scale, swapped, missing[:, order])
    torch.testing.assert_close(again, loss, rtol=1e-12, atol=0)
    for loss_fn in (gram_loss, triangle_loss):
        torch.testing.assert_close(
            loss_fn(shuffled, scale), loss_fn(embs, scale), rtol=1e-12, atol=0
        )


def test_gate_starts_as_the_paper_configures_it() -> None:
    gate = ModalityGate(3, 8, key_dim=4)
    out = gate([torch.randn(2, 8), None, torch.randn(5, 8)])
    assert (
        out.keys[1] is None and out.queries[2].shape == (5, 4) and out.null_logits[0].shape == (2,)
    )
    torch.testing.assert_close(out.temperature, torch.tensor(1.0))
    torch.testing.assert_close(out.strength, torch.sigmoid(torch.tensor(-6.0)))
    torch.testing.assert_close(out.neutral.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out.keys[0].norm(dim=1), torch.ones(2))


def test_missing_from_labs_observed_and_inner_product_flags() -> None:
    observed = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 1]], dtype=torch.uint8)
    missing = missing_from_labs_observed(observed)
    assert missing.tolist() == [[False, False, False], [False, True, False], [False, False, False]]
    # None of the three scores is <q(ecg, labs), c>: an inner-product index cannot serve them.
    assert gram.score_is_inner_product is False
    assert triangle.score_is_inner_product is False
    assert gated_symile.score_is_inner_product is False


# ---- two gloo ranks equal one process -----------------------------------------------------

WORLD, LOCAL_BATCH, FEATURES, DIM = 2, 3, 5, 4
CASES = ["gram3", "gram4", "gram_matching", "triangle", "gated", "gated_missing"]


class _Model(torch.nn.Module):
    def __init__(self, case: str) -> None:
        super().__init__()
        modalities = 4 if case == "gram4" else 3
        g = torch.Generator().manual_seed(modalities)
        self.encoders = torch.nn.ModuleList(
            torch.nn.Linear(FEATURES, DIM, dtype=F64) for _ in range(modalities)
        )
        torch.manual_seed(17)
        self.gate = ModalityGate(modalities, DIM, key_dim=3).to(F64) if "gated" in case else None
        self.head = MatchingHead(modalities, DIM, hidden=4).to(F64) if "matching" in case else None
        with torch.no_grad():
            for p in self.encoders.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
            if self.gate is not None:
                self.gate.strength_logit.fill_(0.3)
        self.log_scale = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, inputs):
        embs = [enc(x) for enc, x in zip(self.encoders, inputs, strict=True)]
        return embs, self.log_scale.exp(), (self.gate(embs) if self.gate is not None else None)


def _global_inputs(case: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    modalities = 4 if case == "gram4" else 3
    g = torch.Generator().manual_seed(100 + modalities)
    inputs = [
        torch.randn(WORLD * LOCAL_BATCH, FEATURES, generator=g, dtype=F64)
        for _ in range(modalities)
    ]
    missing = torch.zeros(WORLD * LOCAL_BATCH, modalities, dtype=torch.bool)
    if case == "gated_missing":
        missing[[0, 4, 5], 1] = True
    return inputs, missing


def _loss_and_grads(model, case: str, inputs, missing):
    embs, scale, gate_out = model(inputs)
    if case.startswith("gram"):
        loss = gram_loss(embs, scale)
        if case == "gram_matching":
            head = model.module.head if isinstance(model, DistributedDataParallel) else model.head
            loss = loss + 0.5 * data_anchor_matching_loss(
                embs, scale, head, torch.Generator().manual_seed(3)
            )
    elif case == "triangle":
        loss = triangle_loss(embs, scale)
    else:
        loss = gated_symile_loss(embs, scale, gate_out, missing)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {}
        for case in CASES:
            model = DistributedDataParallel(_Model(case))
            inputs, missing = _global_inputs(case)
            results[case] = _loss_and_grads(model, case, [x[rows] for x in inputs], missing[rows])
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for case in CASES:
        inputs, missing = _global_inputs(case)
        loss, grads = _loss_and_grads(_Model(case), case, inputs, missing)
        assert math.isfinite(float(loss))
        for result in ranks:
            rank_loss, rank_grads = result[case]
            torch.testing.assert_close(rank_loss, loss, rtol=1e-10, atol=0, msg=case)
            for got, want in zip(rank_grads, grads, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=case)
