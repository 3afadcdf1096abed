"""The images of ``compatkit train``: decoded into memory when they fit, read from their files
every epoch when they do not.

The rule (``loading="auto"``): a collection of image files is held in memory when its
decoded size at the model's input size, N x C x H x W bytes, is at most a quarter
(:data:`~compatkit.data.sources.IN_MEMORY_SHARE`) of the memory available: the host's
``MemAvailable`` and, when training on a GPU, the GPU's free memory. In memory, each file is
decoded once and every epoch gathers its batches on the device: faster whenever it fits (no
decoding after the first pass). Otherwise the set streams: every epoch, ``DataLoader`` worker
processes decode the files of each batch (:class:`~compatkit.data.sources.Streamed`), and
memory holds a few batches whatever N. The anchors (``--anchor``) follow the same rule with
what the training set left of the budget. A registered dataset (``fashion-mnist``,
``cifar10``, ...) is read whole by its loader, so it is in memory. ``--in-memory`` and
``--stream`` (``loading``) override the rule.

The path does not change the model: both give the same batches for the same seed, and a
first model's normalisation is the channel mean and std of the same images (all of them, or
:data:`~compatkit.data.sources.STATS_IMAGES` drawn with the seed when a collection of files
has more), so a checkpoint does not depend on the memory of the machine that trained it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data import ImageSet
from ..data.folder import folder_preprocess
from ..data.preprocess import Preprocess
from ..data.sources import (
    STATS_IMAGES,
    BatchSource,
    InMemory,
    MemoryBudget,
    Skips,
    Streamed,
    source_stats,
)
from ..data.stream import ReadReport
from ..errors import DataError
from .data import Items, labelled_collection, load_items, open_items

__all__ = [
    "TrainingData",
    "choose_loading",
    "open_anchors",
    "open_training_data",
    "stratified_split",
    "training_stats",
]


@dataclass
class TrainingData:
    """A training set as the trainer takes it, and how it is read."""

    source: BatchSource
    """Every item, on the CPU, labels into ``source.classes``."""
    streamed: bool
    from_files: bool
    """A collection of image files (not a registered dataset)."""
    reason: str
    """One line: in memory or streamed, and why."""
    report: ReadReport
    """Files read and skipped; a streamed set counts its skips as its epochs meet them."""


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def choose_loading(loading: str, need: int, budget: MemoryBudget) -> tuple[bool, str]:
    """``(in memory, why)`` for a set of ``need`` decoded bytes (the module docstring's rule;
    ``loading`` = auto, memory or stream). Held in memory, the set takes its bytes from
    ``budget``."""
    size = f"{_gib(need)} decoded"
    if loading == "stream":
        return False, f"streamed from its files (--stream; {size})"
    if loading == "memory":
        budget.left -= need
        return True, f"in memory (--in-memory; {size})"
    if budget.take(need):
        return True, f"in memory ({size}, within the in-memory budget of {_gib(budget.total)})"
    left = f"{_gib(budget.left)} of {_gib(budget.total)}"
    return False, f"streamed from its files ({size}, over the in-memory budget left, {left})"


def _collection_pre(
    items: Items, size: int | None, channels: int | None, pre: Preprocess | None, strict: bool
) -> Preprocess:
    """How the collection's files become the model's input: the model's preprocessing, else
    the files' own (headers read: one size, or ``size``)."""
    if pre is not None:
        return pre
    try:
        return folder_preprocess(items.collection, size, channels, strict)
    except DataError as e:
        raise DataError(f"data {items.spec}: {' '.join(str(e).split())}") from None


def open_training_data(
    spec: str,
    size: int | None,
    channels: int | None,
    pre: Preprocess | None,
    loading: str,
    budget: MemoryBudget,
    workers: int = 0,
    strict: bool = False,
    note: Callable[[str], None] | None = None,
) -> TrainingData:
    """The labelled images of ``spec`` at ``pre`` (or a square of ``size``, ``channels``),
    held in memory or streamed by ``loading`` and ``budget`` (the module docstring)."""
    items = open_items(spec)
    if note is not None and items.left_out():
        note(f"{spec}: {items.left_out()}")
    report = ReadReport()
    if items.collection is None:
        data, _ = load_items(items, size, channels, workers, strict, pre, note, report=report)
        why = "in memory (a registered dataset, read whole by its loader)"
        return TrainingData(InMemory(data), False, False, why, report)
    coll = labelled_collection(items)
    read = _collection_pre(items, size, channels, pre, strict)
    in_memory, why = choose_loading(loading, len(coll) * math.prod(read.input_size), budget)
    if in_memory:
        data, _ = load_items(
            items, workers=workers, strict=strict, preprocess=read, note=note, report=report
        )
        return TrainingData(InMemory(data), False, True, why, report)
    skips = Skips(strict, None if note is None else (lambda m: note(f"{spec}: {m}")))
    return TrainingData(Streamed(coll, read, workers, skips=skips), True, True, why, skips.report)


def open_anchors(
    spec: str,
    pre: Preprocess,
    loading: str,
    budget: MemoryBudget,
    workers: int = 0,
    strict: bool = False,
    note: Callable[[str], None] | None = None,
) -> tuple[ImageSet | BatchSource, str]:
    """``(anchors, why)``: the images of ``spec`` (labelled or not) at ``pre``, held in
    memory or streamed by the same rule as the training set."""
    items = open_items(spec)
    if note is not None and items.left_out():
        note(f"{spec}: {items.left_out()}")
    if items.collection is not None:
        coll = labelled_collection(items, labels=False)
        in_memory, why = choose_loading(loading, len(coll) * math.prod(pre.input_size), budget)
        if not in_memory:
            skips = Skips(strict, None if note is None else (lambda m: note(f"{spec}: {m}")))
            return Streamed(coll, pre, workers, skips=skips), why
    else:
        why = "in memory (a registered dataset)"
    data, _ = load_items(
        items, workers=workers, strict=strict, preprocess=pre, note=note, labels=False
    )
    return data, why


def training_stats(data: TrainingData, seed: int) -> tuple[list[float], list[float]]:
    """A first model's channel mean and std: of every image of a registered dataset; of a
    collection of files, of every image or :data:`STATS_IMAGES` drawn with ``seed`` when it
    has more (the same images on either path)."""
    limit = STATS_IMAGES if data.from_files else None
    return source_stats(data.source, limit, seed)


def stratified_split(
    data: ImageSet | BatchSource, fraction: float, generator: torch.Generator
) -> tuple[ImageSet | BatchSource, ImageSet | BatchSource | None]:
    """``(train, held_out)``: ``fraction`` of each class (rounded, at least one image when the
    class has two or more) drawn at random; ``held_out`` is None when ``fraction`` is 0.
    Works alike on an :class:`ImageSet` and on a batch source (only labels are read)."""
    if fraction <= 0:
        return data, None
    labels = data.labels.cpu()
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[:n])
        keep.append(idx[n:])
    h = torch.cat(held).sort().values
    return data.subset(torch.cat(keep).sort().values), (data.subset(h) if len(h) else None)
