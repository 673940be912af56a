"""The loss family against the reference package `symile` and against obviously-correct loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from symile import Symile

from symile_clinical.objective import losses
from symile_clinical.objective.losses import clip_loss, draw_permutations, symile_loss


def _embeddings(m: int, b: int, d: int, seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=dtype).requires_grad_() for _ in range(m)]


def _scale(value: float = 1.3) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


def _value_and_grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [loss.detach(), *torch.autograd.grad(loss, inputs)]


def _assert_relative(ours: list[torch.Tensor], expected: list[torch.Tensor], rtol: float) -> None:
    for a, b in zip(ours, expected, strict=True):
        assert a.shape == b.shape
        err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)
        assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def _mip(*rows: torch.Tensor) -> torch.Tensor:
    product = rows[0]
    for r in rows[1:]:
        product = product * r
    return product.sum()


def _naive_n_squared(embs: list[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    """Every anchor row against every tuple of non-anchor rows, one MIP at a time."""
    b = embs[0].shape[0]
    per_anchor = []
    for m, anchor in enumerate(embs):
        others = [e for j, e in enumerate(embs) if j != m]
        rows = []
        for a in range(b):
            logits = torch.stack(
                [
                    scale * _mip(anchor[a], *(o[i] for o, i in zip(others, idx, strict=True)))
                    for idx in itertools.product(range(b), repeat=len(others))
                ]
            )
            rows.append(logits.logsumexp(0) - scale * _mip(anchor[a], *(o[a] for o in others)))
        per_anchor.append(torch.stack(rows).mean())
    return torch.stack(per_anchor).mean()


def _naive_n(embs: list[torch.Tensor], scale: torch.Tensor, perms: list[list[torch.Tensor]]):
    """Row a's positive is MIP of row a everywhere; its negative in column b != a takes row
    perms[m][n][b] of the n-th non-anchor modality."""
    b = embs[0].shape[0]
    per_anchor = []
    for m, anchor in enumerate(embs):
        others = [e for j, e in enumerate(embs) if j != m]
        rows = []
        for a in range(b):
            positive = scale * _mip(*(e[a] for e in embs))
            logits = [
                positive
                if c == a
                else scale
                * _mip(anchor[a], *(o[p[c]] for o, p in zip(others, perms[m], strict=True)))
                for c in range(b)
            ]
            rows.append(torch.stack(logits).logsumexp(0) - positive)
        per_anchor.append(torch.stack(rows).mean())
    return torch.stack(per_anchor).mean()


def _naive_clip(embs: list[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    pairs = []
    for p, q in itertools.combinations(range(len(embs)), 2):
        x, y = embs[p], embs[q]
        both = [
            torch.stack([(s * (u @ v.T)).logsumexp(1)[a] - s * u[a] @ v[a] for a in range(len(u))])
            for u, v, s in ((x, y, scale), (y, x, scale))
        ]
        pairs.append((both[0].mean() + both[1].mean()) / 2)
    return torch.stack(pairs).mean()


@pytest.fixture(
    params=[(1 << 21, True), (7, True), (7, False)],
    ids=["one-chunk", "many-chunks", "many-chunks-shifted-exp"],
)
def chunked_path(request, monkeypatch) -> bool:
    """Run with the default chunk size and with chunks far smaller than one anchor's plane;
    with exp(scale * T) unshifted where the logits are small enough (the default), and with
    the max-shifted log-sum-exp forced. Returns whether the unshifted exp is allowed."""
    chunk_elements, unshifted = request.param
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk_elements)
    if not unshifted:
        monkeypatch.setattr(losses, "UNSHIFTED_EXP_BOUND", {torch.float64: -1.0})
    return unshifted


def _assert_path(embs: list[torch.Tensor], scale: torch.Tensor, unshifted: bool) -> None:
    """The parametrisation must really exercise the path it names."""
    bound = losses._logit_bound(scale, embs)
    assert (bound <= losses.UNSHIFTED_EXP_BOUND[torch.float64]) == unshifted


@pytest.mark.parametrize(
    ("m", "b", "d"), [(3, 2, 3), (3, 5, 4), (3, 9, 16), (3, 16, 8), (4, 3, 5), (4, 6, 4)]
)
def test_n_squared_equals_reference(m: int, b: int, d: int, chunked_path: bool) -> None:
    embs, scale = _embeddings(m, b, d, seed=b * d + m), _scale()
    _assert_path(embs, scale, chunked_path)
    inputs = [scale, *embs]
    expected = _value_and_grads(Symile("n_squared")(embs, scale), inputs)
    ours = _value_and_grads(symile_loss(embs, scale, negatives="n_squared"), inputs)
    _assert_relative(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("m", [3, 4, 5])
def test_n_squared_equals_naive_tuples(m: int, chunked_path: bool) -> None:
    embs, scale = _embeddings(m, 3, 4, seed=m), _scale(0.7)
    _assert_path(embs, scale, chunked_path)
    inputs = [scale, *embs]
    expected = _value_and_grads(_naive_n_squared(embs, scale), inputs)
    ours = _value_and_grads(symile_loss(embs, scale, negatives="n_squared"), inputs)
    _assert_relative(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("unshifted", [True, False])
def test_n_squared_gradcheck_on_chunked_path(unshifted: bool, monkeypatch) -> None:
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 5)  # 5 // 4**2 -> one row of x per chunk
    if not unshifted:
        monkeypatch.setattr(losses, "UNSHIFTED_EXP_BOUND", {torch.float64: -1.0})
    for m, b, d in [(3, 4, 3), (4, 3, 2)]:
        embs, scale = _embeddings(m, b, d, seed=11 + m), _scale(0.9)
        _assert_path(embs, scale, unshifted)
        assert torch.autograd.gradcheck(
            lambda s, *e: symile_loss(e, s, negatives="n_squared"), (scale, *embs)
        )


@pytest.mark.parametrize("scale", [10.0, 100.0, 1000.0])
def test_n_squared_float32_is_stable_at_any_scale(scale: float) -> None:
    """exp of logits beyond +-88 overflows float32; large scales must take the shifted path and
    stay accurate, small ones the unshifted one."""
    embs = [torch.nn.functional.normalize(e.detach(), dim=1) for e in _embeddings(3, 12, 8, 3)]
    embs32 = [e.float() for e in embs]
    bound = losses._logit_bound(torch.tensor(scale), embs32)
    assert (bound <= losses.UNSHIFTED_EXP_BOUND[torch.float32]) == (scale < 100)
    expected = Symile("n_squared")(embs, torch.tensor(scale, dtype=torch.float64))
    ours = symile_loss(embs32, scale, negatives="n_squared")
    assert ours.dtype == torch.float32 and torch.isfinite(ours)
    assert abs(ours.item() - expected.item()) <= 1e-5 * abs(expected.item()) + 1e-5


@pytest.mark.parametrize(("m", "b", "d"), [(3, 6, 5), (4, 5, 3)])
def test_n_equals_naive_with_the_same_permutations(m: int, b: int, d: int) -> None:
    embs, scale = _embeddings(m, b, d, seed=m + b), _scale()
    inputs = [scale, *embs]
    perms = draw_permutations(m, b, torch.Generator().manual_seed(5))
    expected = _value_and_grads(_naive_n(embs, scale, perms), inputs)
    generator = torch.Generator().manual_seed(5)
    ours = _value_and_grads(symile_loss(embs, scale, "n", generator=generator), inputs)
    _assert_relative(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("m", [3, 4])
def test_n_equals_reference_drawing_from_the_same_seed(m: int) -> None:
    """The reference draws from global state; seeded alike, it must draw our permutations."""
    embs, scale = _embeddings(m, 7, 4, seed=m), _scale()
    inputs = [scale, *embs]
    with torch.random.fork_rng():
        torch.manual_seed(21)
        expected = _value_and_grads(Symile("n")(embs, scale), inputs)
    generator = torch.Generator().manual_seed(21)
    ours = _value_and_grads(symile_loss(embs, scale, "n", generator=generator), inputs)
    _assert_relative(ours, expected, rtol=1e-12)


def test_n_uses_only_its_generator() -> None:
    embs = _embeddings(3, 8, 4, seed=0)
    state = torch.random.get_rng_state()
    first = symile_loss(embs, 1.0, "n", generator=torch.Generator().manual_seed(1))
    again = symile_loss(embs, 1.0, "n", generator=torch.Generator().manual_seed(1))
    other = symile_loss(embs, 1.0, "n", generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(ValueError, match=r"seeded torch\.Generator"):
        symile_loss(embs, 1.0, "n")


def _naive_conditional(embs: list[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    """Tuple a's first M - 1 rows with every row k of the last modality, one MIP at a time,
    cross-entropy over k (retrieval's direction) and over a (the reverse), averaged."""
    *query, target = embs
    b = target.shape[0]
    logits = torch.stack(
        [
            torch.stack([scale * _mip(*(q[a] for q in query), target[k]) for k in range(b)])
            for a in range(b)
        ]
    )
    forward = torch.stack([logits[a].logsumexp(0) - logits[a, a] for a in range(b)]).mean()
    reverse = torch.stack([logits[:, k].logsumexp(0) - logits[k, k] for k in range(b)]).mean()
    return (forward + reverse) / 2


@pytest.mark.parametrize(("m", "b", "d"), [(3, 6, 5), (4, 5, 3)])
def test_conditional_equals_naive_tuples(m: int, b: int, d: int) -> None:
    embs, scale = _embeddings(m, b, d, seed=3 * m + b), _scale()
    inputs = [scale, *embs]
    expected = _value_and_grads(_naive_conditional(embs, scale), inputs)
    ours = _value_and_grads(symile_loss(embs, scale, "conditional"), inputs)
    _assert_relative(ours, expected, rtol=1e-10)


def test_conditional_meets_only_negatives_of_the_last_modality() -> None:
    """The queries are the batch's own (ECG, labs) pairs: reordering whole tuples leaves the
    loss unchanged, pairing an ECG with another tuple's labs changes it."""
    embs = [e.detach() for e in _embeddings(3, 5, 4, seed=11)]
    base = symile_loss(embs, 2.0, "conditional")
    order = torch.tensor([1, 0, 2, 3, 4])
    whole = symile_loss([e[order] for e in embs], 2.0, "conditional")
    torch.testing.assert_close(whole, base, rtol=1e-12, atol=0)
    mixed = symile_loss([embs[0], embs[1][order], embs[2]], 2.0, "conditional")
    assert not torch.allclose(mixed, base)


@pytest.mark.parametrize("negatives", ["n", "n_squared", "conditional"])
def test_two_modalities_equal_clip_exactly(negatives: str) -> None:
    embs, scale = _embeddings(2, 6, 4, seed=9), _scale()
    inputs = [scale, *embs]
    expected = _value_and_grads(clip_loss(embs, scale), inputs)
    ours = _value_and_grads(symile_loss(embs, scale, negatives), inputs)  # type: ignore[arg-type]
    for a, b in zip(ours, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("m", [2, 3])
def test_clip_loss_equals_naive_pairs(m: int) -> None:
    embs, scale = _embeddings(m, 5, 3, seed=m), _scale()
    inputs = [scale, *embs]
    expected = _value_and_grads(_naive_clip(embs, scale), inputs)
    _assert_relative(_value_and_grads(clip_loss(embs, scale), inputs), expected, rtol=1e-12)


def test_perfectly_aligned_batch_has_low_loss() -> None:
    """Sanity of sign and scale: orthogonal one-hot rows, large scale -> loss near zero."""
    eye = torch.eye(4, dtype=torch.float64)
    # ("n" may draw the positive tuple again as a negative, as the reference does.)
    assert symile_loss([eye, eye, eye], 50.0, "n_squared").item() < 1e-6
    uniform = symile_loss([eye * 0, eye * 0, eye * 0], 1.0, "n_squared")
    assert math.isclose(uniform.item(), math.log(4**2), rel_tol=1e-12)


@pytest.mark.parametrize("negatives", ["n", "n_squared", "conditional"])
def test_bf16_autocast_scores_in_float32(negatives: str) -> None:
    """Under CPU bf16 autocast the embeddings come out bf16; the loss is computed in float32
    from them, and gradients flow back in bf16."""
    g = torch.Generator().manual_seed(0)
    encoders = [torch.nn.Linear(6, 8) for _ in range(3)]
    inputs = [torch.randn(10, 6, generator=g) for _ in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embs = [enc(x) for enc, x in zip(encoders, inputs, strict=True)]
        loss = symile_loss(embs, 5.0, negatives, torch.Generator().manual_seed(3))
    assert all(e.dtype == torch.bfloat16 for e in embs)
    assert loss.dtype == torch.float32
    expected = symile_loss(
        [e.detach().float() for e in embs], 5.0, negatives, torch.Generator().manual_seed(3)
    )
    assert torch.equal(loss.detach(), expected)
    loss.backward()
    assert all(torch.isfinite(enc.weight.grad).all() for enc in encoders)


def test_invalid_arguments_are_rejected() -> None:
    embs = _embeddings(3, 4, 2, seed=0)
    with pytest.raises(ValueError, match="negatives must be"):
        symile_loss(embs, 1.0, "n_cubed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 modalities"):
        symile_loss(embs[:1], 1.0, "n_squared")
    with pytest.raises(ValueError, match="must all be"):
        clip_loss([embs[0], embs[1][:3]], 1.0)
