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

Each sampler is a *plan* (:func:`epoch_plan`: per batch, the positions of its new and its
memory items) and a gather. Batches of an in-memory set are gathered with one index tensor
each, on the device where the data lives: no per-sample Python and no DataLoader workers. A
set read from files (:class:`compatkit.data.sources.Streamed`) reads the same plan's
positions, so with the same generator both give the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .imageset import ImageSet

__all__ = [
    "SAMPLERS",
    "balanced_batches",
    "balanced_plan",
    "epoch_batches",
    "epoch_plan",
    "half_and_half_batches",
    "half_and_half_plan",
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


def _empty_epoch(n: int, batch_size: int) -> bool:
    """True for no new items; a batch size BatchNorm cannot train on is a ``ValueError``."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (BatchNorm needs two samples), got {batch_size}")
    return n == 0


def half_and_half_plan(
    n: int,
    m: int,
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The ``shuffle`` sampler's epoch as ``(new positions, memory positions or None)`` per
    batch, for ``n`` new items and ``m`` memory items; see :func:`half_and_half_batches`."""
    if _empty_epoch(n, batch_size):
        return
    perm = randperm_on(n, generator, device)
    if m == 0:
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() == 1:
                break  # a lone final sample: BatchNorm cannot train on a batch of one
            yield idx, None
        return
    half = batch_size // 2
    extra = batch_size - 2 * half  # 1 for an odd batch size: the memory half gets it
    sizes = [min(half, n - s) for s in range(0, n, half)]
    mem_total = sum(r + extra for r in sizes)
    cycles = -(-mem_total // m)  # ceil
    mem_stream = torch.cat([randperm_on(m, generator, device) for _ in range(cycles)])
    new_pos = mem_pos = 0
    for r in sizes:
        yield perm[new_pos : new_pos + r], mem_stream[mem_pos : mem_pos + r + extra]
        new_pos += r
        mem_pos += r + extra


def _draw(n: int, size: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """``size`` indices of ``range(n)``, as ``np.random.choice(n, size, replace=n <= size)``:
    distinct when the pool is larger than the draw, with repeats otherwise."""
    if n <= size:
        gen_device = generator.device if generator is not None else device
        return torch.randint(n, (size,), generator=generator, device=gen_device).to(device)
    return randperm_on(n, generator, device)[:size]


def balanced_plan(
    n: int,
    m: int,
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The ``balanced`` sampler's epoch as ``(new positions, memory positions or None)`` per
    batch, for ``n`` new items and ``m`` memory items; see :func:`balanced_batches`."""
    if _empty_epoch(n, batch_size):
        return
    if m == 0:
        perm = randperm_on(n, generator, device)
        if n < batch_size:
            if n > 1:
                yield perm, None
            return
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size], None
        return
    steps = steps_per_epoch(n, m, batch_size, "balanced")
    size = batch_size // 2 if (n + m) >= batch_size else (n + m) // 2
    for _ in range(steps):
        idx_mem = _draw(m, size, generator, device)
        idx_new = _draw(n, size, generator, device)
        yield idx_new, idx_mem


def epoch_plan(
    n: int,
    m: int,
    batch_size: int,
    generator: torch.Generator | None,
    sampler: str = "shuffle",
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """One epoch of the named sampler as positions: per batch the new items' positions in
    ``range(n)`` and the memory items' in ``range(m)`` (None without memory), on ``device``.

    The draws are those of :func:`epoch_batches` in the same order, so a source that reads
    the positions from files trains on the batches an in-memory set would give.
    """
    plan = {"shuffle": half_and_half_plan, "balanced": balanced_plan}.get(sampler)
    if plan is None:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    return plan(n, m, batch_size, generator, torch.device(device))


def _gather(
    new: ImageSet, memory: ImageSet | None, plan: Iterator[tuple[torch.Tensor, torch.Tensor | None]]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The images and labels at each batch's positions (new first, then memory)."""
    for idx_new, idx_mem in plan:
        if idx_mem is None:
            yield new.images[idx_new], new.labels[idx_new]
        else:
            yield (
                torch.cat([new.images[idx_new], memory.images[idx_mem]]),
                torch.cat([new.labels[idx_new], memory.labels[idx_mem]]),
            )


def _memory_on(memory: ImageSet | None, device: torch.device) -> tuple[ImageSet | None, int]:
    """The memory on ``device`` and its size (0 for none). E.g. a memory restored from a
    checkpoint on the CPU while the task data is on the GPU: the memory is small (per_class x
    classes images), so move it rather than fail."""
    if memory is None or len(memory) == 0:
        return None, 0
    return (memory if memory.device == device else memory.to(device)), len(memory)


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
    memory, m = _memory_on(memory, new.device)
    yield from _gather(
        new, memory, half_and_half_plan(len(new), m, batch_size, generator, new.device)
    )


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
    memory, m = _memory_on(memory, new.device)
    yield from _gather(new, memory, balanced_plan(len(new), m, batch_size, generator, new.device))
