"""One epoch of batches, optionally half new data and half rehearsal memory.

IAM-CL2R (Biondi et al., CVPR 2024; docs/method.md §4): after the first task
every batch is half new-task data, half memory. Two samplers, chosen with
``train.sampler``:

- ``shuffle`` (:func:`half_and_half_batches`, compatkit's default): an epoch is
  one shuffled pass over the new data; the memory half is drawn from a
  shuffled cycle over the memory (a fresh permutation each time the cycle
  wraps), so every memory sample is used the same number of times, give or
  take one.
- ``balanced`` (:func:`balanced_batches`, the authors' released
  ``BalancedBatchSampler``, ``dataset/dataset_utils.py``): an epoch is
  (new + memory) // batch_size batches, each drawn independently, half from
  the memory and half new; the first task is a plain shuffle that drops the
  last partial batch (``DataLoader(shuffle=True, drop_last=True)``).

:func:`steps_per_epoch` is the one place that says how many batches an epoch
has; the trainer, progress bars and planners all ask it.

Batches are gathered with one index tensor each, on the device where the data
lives: no per-sample Python and no DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .imageset import ImageSet

__all__ = [
    "SAMPLERS",
    "balanced_batches",
    "epoch_batches",
    "half_and_half_batches",
    "randperm_on",
    "steps_per_epoch",
]

SAMPLERS = ("shuffle", "balanced")


def steps_per_epoch(n_new: int, n_memory: int, batch_size: int, sampler: str = "shuffle") -> int:
    """Batches in one epoch over ``n_new`` task images and ``n_memory`` memory images.

    ``n_memory`` is 0 when the task trains without memory (the first task, or a method
    that uses none). ``shuffle``: ceil(n_new / (batch_size // 2)) with memory,
    ceil(n_new / batch_size) without, less a final batch of one image (BatchNorm cannot
    train on it). ``balanced``: (n_new + n_memory) // batch_size with memory and
    n_new // batch_size without (the partial batch dropped), at least 1 (a task smaller
    than one batch trains on one batch of everything, as the released code shrinks its
    batch to the task).
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two samples), got {batch_size}")
    if sampler == "balanced":
        return max(1, (n_new + n_memory) // batch_size)
    if sampler != "shuffle":
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    per = batch_size // 2 if n_memory > 0 else batch_size
    n = -(-n_new // per)
    if n_memory == 0 and n_new % per == 1 and n > 1:
        n -= 1  # the sampler drops a final batch of one image
    return max(1, n)


def epoch_batches(
    new: ImageSet,
    memory: ImageSet | None,
    batch_size: int,
    generator: torch.Generator | None,
    sampler: str = "shuffle",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(uint8 images, labels)`` batches with the named sampler."""
    if sampler == "balanced":
        return balanced_batches(new, memory, batch_size, generator)
    if sampler != "shuffle":
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    return half_and_half_batches(new, memory, batch_size, generator)


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


def _draw(n: int, size: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """``size`` indices of ``range(n)``, as ``np.random.choice(n, size, replace=n <= size)``:
    distinct when the pool is larger than the draw, with repeats otherwise."""
    if n <= size:
        gen_device = generator.device if generator is not None else device
        return torch.randint(n, (size,), generator=generator, device=gen_device).to(device)
    return randperm_on(n, generator, device)[:size]


def balanced_batches(
    new: ImageSet,
    memory: ImageSet | None,
    batch_size: int,
    generator: torch.Generator | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield one epoch of the released code's batches.

    Without memory (None or empty): one shuffled pass in batches of ``batch_size``, the last
    partial batch dropped; a task smaller than one batch gives one batch of all its images.

    With memory: ``steps_per_epoch(len(new), len(memory), batch_size, "balanced")`` batches,
    each made of ``size`` new images then ``size`` memory images, ``size`` =
    ``batch_size // 2`` (``(len(new) + len(memory)) // 2`` when they do not fill one batch).
    Each half is drawn afresh for every batch, without repeats inside the batch unless its
    pool is not larger than ``size``; across batches images repeat and some are never drawn,
    exactly as in the released sampler. New images come first, as in
    :func:`half_and_half_batches` (the released batch puts memory first; every loss here is
    invariant to the order within a batch).
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two samples), got {batch_size}")
    device = new.device
    n = len(new)
    if n == 0:
        return
    if memory is None or len(memory) == 0:
        perm = randperm_on(n, generator, device)
        if n < batch_size:
            if n > 1:
                yield new.images[perm], new.labels[perm]
            return
        for start in range(0, n - batch_size + 1, batch_size):
            idx = perm[start : start + batch_size]
            yield new.images[idx], new.labels[idx]
        return
    if memory.device != device:
        memory = memory.to(device)
    m = len(memory)
    steps = steps_per_epoch(n, m, batch_size, "balanced")
    size = batch_size // 2 if (n + m) >= batch_size else (n + m) // 2
    for _ in range(steps):
        idx_mem = _draw(m, size, generator, device)
        idx_new = _draw(n, size, generator, device)
        yield (
            torch.cat([new.images[idx_new], memory.images[idx_mem]]),
            torch.cat([new.labels[idx_new], memory.labels[idx_mem]]),
        )
