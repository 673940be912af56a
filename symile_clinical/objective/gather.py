"""The losses' gather: every rank's embeddings, with gradients, so negatives are global.

With data-parallel training each rank holds B local rows of every modality. A contrastive loss
wants its negatives from the global batch, so each rank gathers all ranks' embeddings
(`gather_with_grad`) and scores only its own anchor rows against them ("local loss", as in
open_clip). The gather's backward sums, over ranks, the gradients that every rank's loss sends
to a rank's rows, so that rank r's local embeddings receive d(sum_r' loss_r')/d(rows of r);
DistributedDataParallel then averages parameter gradients over the W ranks, which gives exactly
the gradient of the single-process loss on the concatenated batch, (1/W) sum_r' loss_r'.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor


class WorldInfo(NamedTuple):
    """This process's rank and the number of processes (0 and 1 when not distributed)."""

    rank: int
    world_size: int


def world_info() -> WorldInfo:
    """(rank, world_size) of the default process group; (0, 1) when torch.distributed is not
    initialised."""
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(dist.get_rank(), dist.get_world_size())
    return WorldInfo(0, 1)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        rank, world = world_info()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:
            mine = torch.empty((ctx.rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(mine, grad)
            return mine
        # gloo has no reduce_scatter: sum the whole gradient and keep this rank's rows.
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def in_process_group() -> bool:
    """Whether torch.distributed is initialised (a single torchrun rank included): the losses
    then gather across ranks."""
    return dist.is_available() and dist.is_initialized()


def check_same_rows(rows: int, device: torch.device) -> None:
    """Raise ValueError on every rank unless all ranks hold `rows` rows (an all_gather of sizes
    mismatched would otherwise fail obscurely or hang). No-op when not distributed."""
    _, world = world_info()
    if world == 1:
        return
    mine = torch.tensor([rows], dtype=torch.int64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    counts = [int(c) for c in everyone]
    if len(set(counts)) != 1:
        raise ValueError(
            f"every rank must pass the same local batch size (use drop_last=True), got {counts}"
        )


def gather_with_grad(tensor: Tensor) -> Tensor:
    """[B, ...] local rows -> [W * B, ...] all ranks' rows in rank order, differentiable.

    Every rank must pass the same shape (use drop_last=True in the sampler). Without an
    initialised process group this returns `tensor` itself; with one (a single torchrun rank
    included) it gathers, so that one GPU exercises the collective path more GPUs take.
    """
    if not in_process_group():
        return tensor
    return _GatherWithGrad.apply(tensor)
