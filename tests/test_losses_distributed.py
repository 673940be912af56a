"""Two gloo processes with DistributedDataParallel give the loss and the gradients of one process
computing the loss on the concatenated batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from symile_clinical.objective import losses
from symile_clinical.objective.gather import gather_with_grad, world_info
from symile_clinical.objective.losses import clip_loss, symile_loss

WORLD = 2
LOCAL_BATCH = 3
FEATURES, DIM = 5, 4
# (objective, negatives, modalities, max-shifted exp forced on the ranks)
CASES = [
    ("symile", "n", 3, False),
    ("symile", "n", 4, False),
    ("symile", "n_squared", 3, False),
    ("symile", "n_squared", 3, True),
    ("symile", "n_squared", 4, False),
    ("symile", "n", 2, False),
    ("symile", "conditional", 3, False),
    ("symile", "conditional", 4, False),
    ("clip", None, 3, False),
]


class _Encoders(torch.nn.Module):
    """One linear encoder per modality and a learned log scale, seeded explicitly."""

    def __init__(self, modalities: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(modalities)
        self.encoders = torch.nn.ModuleList(
            torch.nn.Linear(FEATURES, DIM, dtype=torch.float64) for _ in range(modalities)
        )
        with torch.no_grad():
            for p in self.encoders.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        self.log_scale = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, inputs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        return [enc(x) for enc, x in zip(self.encoders, inputs, strict=True)], self.log_scale.exp()


def _global_inputs(modalities: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + modalities)
    return [
        torch.randn(WORLD * LOCAL_BATCH, FEATURES, generator=g, dtype=torch.float64)
        for _ in range(modalities)
    ]


def _loss_and_grads(model: torch.nn.Module, inputs, objective, negatives):
    embs, scale = model(inputs)
    if objective == "clip":
        loss = clip_loss(embs, scale)
    else:
        loss = symile_loss(embs, scale, negatives, generator=torch.Generator().manual_seed(7))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        losses.CHUNK_ELEMENTS = 7  # exercise the chunked path across ranks too
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {"world_info": tuple(world_info())}
        # The gather itself: rows in rank order; gradient of a sum over all ranks' use is W.
        local = torch.full((LOCAL_BATCH, 2), float(rank), requires_grad=True)
        gathered = gather_with_grad(local)
        gathered.sum().backward()
        results["gathered"] = gathered.detach()
        results["gather_grad"] = local.grad
        for case in CASES:
            objective, negatives, modalities, shifted = case
            losses.UNSHIFTED_EXP_BOUND = {torch.float64: -1.0 if shifted else 300.0}
            model = DistributedDataParallel(_Encoders(modalities))
            inputs = [x[rows] for x in _global_inputs(modalities)]
            results[case] = _loss_and_grads(model, inputs, objective, negatives)
        try:
            clip_loss([torch.zeros(LOCAL_BATCH + rank, DIM)] * 2, 1.0)
        except ValueError as err:
            results["mismatch"] = str(err)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    for r, result in enumerate(ranks):
        assert result["world_info"] == (r, WORLD)
        expected_rows = torch.cat([torch.full((LOCAL_BATCH, 2), float(q)) for q in range(WORLD)])
        assert torch.equal(result["gathered"], expected_rows)
        assert torch.equal(result["gather_grad"], torch.full((LOCAL_BATCH, 2), float(WORLD)))
        assert "same local batch size" in result["mismatch"]

    assert world_info() == (0, 1)
    for case in CASES:
        objective, negatives, modalities, shifted = case
        model, inputs = _Encoders(modalities), _global_inputs(modalities)
        if negatives == "n_squared" and not shifted:  # the ranks really took the unshifted path
            assert losses._logit_bound(model(inputs)[1], model(inputs)[0]) <= 300.0
        loss, grads = _loss_and_grads(model, inputs, objective, negatives)
        for result in ranks:
            rank_loss, rank_grads = result[case]
            torch.testing.assert_close(rank_loss, loss, rtol=1e-10, atol=0, msg=str(case))
            for got, want in zip(rank_grads, grads, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=str(case))


def test_one_rank_process_group_gathers_and_matches_no_group(tmp_path) -> None:
    """One torchrun rank joins a process group (NCCL on one GPU; gloo here): the gather then
    runs its collective path, and the loss and gradients equal those without a group."""
    import torch.distributed as dist

    from symile_clinical.objective.gather import in_process_group

    g = torch.Generator().manual_seed(0)
    embs = [torch.randn(6, 8, generator=g) for _ in range(3)]

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = [e.clone().requires_grad_() for e in embs]
        loss = losses.symile_loss(leaves, 5.0, "n_squared")
        loss.backward()
        return loss.detach(), [leaf.grad for leaf in leaves]

    plain_loss, plain_grads = loss_and_grads()
    assert not in_process_group()
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert in_process_group()
        x = torch.randn(4, 3, requires_grad=True)
        gathered = gather_with_grad(x)
        assert gathered is not x and torch.equal(gathered, x)
        gathered.sum().backward()
        assert torch.equal(x.grad, torch.ones_like(x))
        group_loss, group_grads = loss_and_grads()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(group_loss, plain_loss)
    for a, b in zip(group_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b)
