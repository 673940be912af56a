"""The world a training process joins: torchrun's process group (nccl on CUDA, gloo on CPU).

`joined_world` joins the process group that torchrun launches (WORLD_SIZE > 1) and says where
this process stands in it (`World`: rank, world size, local rank); the trainer runs inside it.
The losses' gather with gradients lives with the objective (symile_clinical/objective/gather.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """WorldInfo plus what a launched process needs: its GPU index on its node (LOCAL_RANK)
    and whether it joined the process group itself (and so must leave it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def joined(self) -> bool:
        """Whether this process is in a process group (the model is then wrapped in DDP and the
        losses gather across ranks, one rank included)."""
        return self.world_size > 1 or self.initialised_here

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.joined:
            dist.barrier()


def join_world(cuda: bool) -> World:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) when launched by torchrun, even
    with one process (so that `--nproc_per_node 1` runs the gather and DDP through NCCL, as
    more GPUs would); a plain single process (no torchrun) is World() and joins nothing."""
    launched = "TORCHELASTIC_RUN_ID" in os.environ
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not launched:
        return World()
    initialised_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        initialised_here = True
    return World(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", "0")),
        initialised_here,
    )


@contextmanager
def joined_world(cuda: bool) -> Iterator[World]:
    """`join_world(cuda)` for the block; a process group joined here is left at its end."""
    world = join_world(cuda)
    try:
        yield world
    finally:
        if world.initialised_here:
            dist.destroy_process_group()
