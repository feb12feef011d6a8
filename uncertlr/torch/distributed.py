"""Data-parallel training with ``torch.distributed``: launch with ``torchrun``, nothing home-made.

Every process holds the whole BNN; :class:`ELBOLoss` lets
``torch.nn.parallel.DistributedDataParallel`` average the ELBO's gradients across
processes, and :func:`~uncertlr.torch.fit`'s ``shard=(rank, world_size)``
gives each process its share of every global batch. With the same seed on every
process, all processes draw the same weight noise, so N processes on batches of
B/N compute exactly the gradient one process computes on the batch of B.

Example (``train.py``, run with ``torchrun --nproc_per_node=2 train.py``)::

    from torch.nn.parallel import DistributedDataParallel as DDP
    from uncertlr.torch import bayesian
    from uncertlr.torch.distributed import ELBOLoss, init_from_env
    from uncertlr.torch import fit

    info = init_from_env()                     # gloo on CPU, NCCL on GPU
    torch.manual_seed(0)                       # the same seed on every process
    bnn = bayesian(net, num_data=len(x)).to(info.device)
    loss = DDP(ELBOLoss(bnn))
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-3)
    fit(loss, opt, x, y, epochs=10, batch_size=256, shard=(info.rank, info.world_size),
        generator=torch.Generator().manual_seed(0), progress=info.rank == 0)
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from uncertlr.torch.bnn import BNN, ELBOTerms

__all__ = ["DistInfo", "ELBOLoss", "all_reduce_mean", "init_from_env"]


class DistInfo(NamedTuple):
    """This process's place in the job: ``rank``, ``world_size``, ``local_rank`` and its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op for one process).

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; picks NCCL when CUDA is available and
    gloo otherwise, unless ``backend`` says otherwise. Safe to call when already initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"))
    return DistInfo(rank, world, local, device)


def all_reduce_mean(value: Tensor) -> Tensor:
    """The mean of ``value`` over all processes (``value`` itself without a process group).

    Used by :class:`~uncertlr.torch.Modulator` on a global rule's signal, so every replica
    applies the same factor.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


class ELBOLoss(nn.Module):
    """``forward(x, y) -> ELBOTerms`` of a BNN, so ``DistributedDataParallel`` can wrap the loss.

    DDP prepares its gradient all-reduce inside ``forward``; calling ``bnn.loss`` on the
    wrapped module directly would bypass it. Pyro's ``ELBOModule`` plays the same role.
    """

    def __init__(self, bnn: BNN, *, num_particles: int = 1):
        super().__init__()
        self.bnn = bnn
        self.num_particles = num_particles

    def forward(self, x: Tensor, y: Tensor) -> ELBOTerms:
        return self.bnn.elbo(x, y, num_particles=self.num_particles)
