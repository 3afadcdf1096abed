"""Data-parallel training under ``torchrun``: each rank trains on its shard of every batch.

``torchrun --nproc-per-node N -m compatkit run CONFIG`` starts N processes; each
builds the same plan, draws the same global batch (same generator), augments it
identically, and keeps its own contiguous shard. DistributedDataParallel
averages the gradients. Batch-level losses (HOC's negatives, CVS's hardest
negative) see the whole global batch: the trainer gathers features, logits and
labels from every rank with an autograd-aware all-gather, so each rank computes
the loss of the global batch and the gradient that reaches each shard is the
single-process gradient. What still differs from one process: BatchNorm
batch statistics are per shard (SyncBatchNorm is used on CUDA; on the CPU
``gloo`` has none), and floating-point reduction order.

Rank 0 alone writes files (checkpoints, logs, metrics, plots); the others wait
at a barrier. Feature extraction is sharded the same way and gathered.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Dist", "gather_rows", "init", "shard_slice"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init(device_name: str = "auto") -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (or none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=30),
        )
    return Dist(rank, world, local)


def shard_slice(n: int, d: Dist) -> slice:
    """This rank's contiguous part of ``n`` items (the first ranks take one more if uneven)."""
    if not d.enabled:
        return slice(0, n)
    base, extra = divmod(n, d.world)
    start = d.rank * base + min(d.rank, extra)
    return slice(start, start + base + (1 if d.rank < extra else 0))


def _sizes(x: torch.Tensor, d: Dist) -> list[int]:
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(d.world)]
    dist.all_gather(sizes, n)
    return [int(s) for s in sizes]


def _gather(x: torch.Tensor, sizes: list[int], d: Dist) -> torch.Tensor:
    m = max(sizes)
    xp = torch.cat([x, x.new_zeros((m - x.shape[0], *x.shape[1:]))]) if m > x.shape[0] else x
    parts = [torch.empty_like(xp) for _ in range(d.world)]
    dist.all_gather(parts, xp.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


class _GatherRows(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient and keeps this rank's rows.

    Every rank computes the same global loss, so the gradient of that loss with respect
    to this rank's rows is the sum of what each rank's copy sends back; DDP's gradient
    averaging then divides by the world size, which gives exactly the single-process
    gradient of the global batch.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], d: Dist) -> torch.Tensor:
        ctx.sizes, ctx.d = sizes, d
        return _gather(x, sizes, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.d.rank])
        return grad[start : start + ctx.sizes[ctx.d.rank]], None, None


def gather_rows(x: torch.Tensor, d: Dist, autograd: bool = False) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order (shards may differ in size).

    With ``autograd=True`` the gradient flows back to each rank's own rows; used for
    batch-level losses (see :class:`_GatherRows` for the scaling).
    """
    if not d.enabled:
        return x
    sizes = _sizes(x, d)
    if autograd:
        return _GatherRows.apply(x, sizes, d)
    return _gather(x, sizes, d)
