"""One epoch of batches, optionally half new data and half rehearsal memory.

IAM-CL2R reference (Biondi et al., CVPR 2024; METHOD.md "Protocol"): after the
first task every batch is half new-task data, half memory. An epoch is one
shuffled pass over the new data; the memory half is drawn from a shuffled
cycle over the memory (a fresh permutation each time the cycle wraps), so
every memory sample is used the same number of times, give or take one.

Batches are gathered with one index tensor each, on the device where the data
lives: no per-sample Python and no DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .imageset import ImageSet

__all__ = ["half_and_half_batches", "randperm_on"]


def randperm_on(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``randperm(n)`` drawn with ``generator`` (on its own device) and placed on ``device``.

    A CPU generator cannot draw on a GPU and vice versa; drawing where the generator lives
    keeps one seed reproducible whatever device the data sits on.
    """
    gen_device = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=gen_device).to(device)


def half_and_half_batches(
    new: ImageSet,
    memory: ImageSet | None,
    batch_size: int,
    generator: torch.Generator | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images, labels)`` batches for one epoch.

    Without memory (None or empty): shuffled batches of ``batch_size`` new samples; the
    last partial batch is kept, except a final batch of one sample, which is dropped
    because BatchNorm cannot compute batch statistics from one sample.

    With memory: each batch is ``batch_size // 2`` new samples followed by
    ``batch_size - batch_size // 2`` memory samples (new first, so a method can slice the
    two halves). The memory is moved to the new data's device if it is elsewhere. The final
    partial batch of ``r`` new samples keeps the same balance:
    ``r + (batch_size - 2 * (batch_size // 2))`` memory samples.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two samples), got {batch_size}")
    device = new.device
    n = len(new)
    if n == 0:
        return
    perm = randperm_on(n, generator, device)

    if memory is None or len(memory) == 0:
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() == 1:
                break  # a lone final sample: BatchNorm cannot train on a batch of one
            yield new.images[idx], new.labels[idx]
        return

    if memory.device != device:
        # E.g. a memory restored from a checkpoint on the CPU while the task data is on the
        # GPU: the memory is small (per_class x classes images), so move it rather than fail.
        memory = memory.to(device)
    half = batch_size // 2
    extra = batch_size - 2 * half  # 1 for an odd batch size: the memory half gets it
    sizes = [min(half, n - s) for s in range(0, n, half)]
    mem_total = sum(r + extra for r in sizes)
    m = len(memory)
    cycles = -(-mem_total // m)  # ceil
    mem_stream = torch.cat([randperm_on(m, generator, device) for _ in range(cycles)])
    new_pos = mem_pos = 0
    for r in sizes:
        idx_new = perm[new_pos : new_pos + r]
        idx_mem = mem_stream[mem_pos : mem_pos + r + extra]
        new_pos += r
        mem_pos += r + extra
        yield (
            torch.cat([new.images[idx_new], memory.images[idx_mem]]),
            torch.cat([new.labels[idx_new], memory.labels[idx_mem]]),
        )
