"""Where training batches come from: an image set held in memory, or image files read as an
epoch needs them.

The trainer (:func:`compatkit.protocol.trainer.train_task`) asks a source for one epoch of
uint8 batches of the model's input size on the training device, then augments and scales
them itself, so both sources train the same way. Which items make each batch is the
sampler's plan (:func:`compatkit.data.sampler.epoch_plan`), whatever the source:

- :class:`InMemory`: an :class:`~compatkit.data.ImageSet` decoded once (Fashion-MNIST, CIFAR,
  a folder that fits in memory); each batch is one index on the device, the fast path;
- :class:`Streamed`: a :class:`~compatkit.data.collection.Collection` of files, decoded and
  preprocessed (resize, crop) by ``DataLoader`` worker processes at the plan's positions. The
  main process holds the paths (a few bytes per item), the labels (8 bytes per item), one
  epoch's plan (8 bytes per item) and a few batches, whatever the collection's size. With
  the same generator it gives the batches :class:`InMemory` gives of the same files, and
  the trainer draws the same augmentations after them (see :meth:`Streamed.batches` for
  the one exception, the balanced sampler with memory).

A file that cannot be read is skipped, reported once by path and counted (:class:`Skips`;
a file fails in every epoch), or, with ``strict``, stops training with a ``DataError``
naming it. Both sources also give their items in order (:meth:`InMemory.ordered`: channel
statistics, class means, validation) and subsets (a validation split).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from ..errors import DataError
from .collection import Collection
from .imageset import ImageSet, as_index
from .preprocess import Preprocess
from .sampler import epoch_batches, epoch_plan
from .stream import ReadReport, batch_loader

__all__ = [
    "IN_MEMORY_SHARE",
    "STATS_IMAGES",
    "BatchSource",
    "ChannelMoments",
    "InMemory",
    "MemoryBudget",
    "Skips",
    "Streamed",
    "as_source",
    "available_memory",
    "source_stats",
]

IN_MEMORY_SHARE = 0.25
"""Share of the available memory a decoded training set (N x C x H x W bytes) may take to
be held in memory. The in-memory path holds it up to twice while a validation split is copied
out, beside the model, its optimiser state and the batches' activations; a quarter leaves that
room on a machine others use too."""

STATS_IMAGES = 4096
"""Images whose pixels give a first model's channel mean and std when it streams (all of
them when there are fewer): the mean of 4096 images is within a few thousandths of the
collection's, and decoding them costs seconds, not an epoch."""

_FALLBACK_MEMORY = 4 * 2**30  # bytes assumed available where the platform does not say


class BatchSource(Protocol):
    """What the trainer and ``compatkit train`` need of their training data."""

    classes: list[str]

    def __len__(self) -> int: ...

    @property
    def labels(self) -> torch.Tensor:
        """int64 ``(N,)`` on the CPU: item ``i``'s index into ``classes``."""
        ...

    @property
    def input_size(self) -> tuple[int, int, int]: ...

    def batches(
        self,
        memory: ImageSet | None,
        batch_size: int,
        generator: torch.Generator | None,
        sampler: str = "shuffle",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(uint8 images, labels)`` on the training device."""
        ...

    def ordered(self, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every item once, in order, as ``(uint8 images, labels)`` batches."""
        ...

    def subset(self, index: torch.Tensor | Sequence[int]) -> BatchSource: ...

    def map_labels(self, lut: torch.Tensor, classes: list[str]) -> BatchSource:
        """The same items with label ``k`` replaced by ``lut[k]`` (into ``classes``)."""
        ...

    def to(self, device: torch.device | str) -> BatchSource: ...


class InMemory:
    """An :class:`ImageSet` as a batch source: the sampler's batches gathered on its device."""

    def __init__(self, data: ImageSet) -> None:
        self.data = data
        self.classes = data.classes

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"InMemory({self.data!r})"

    @property
    def labels(self) -> torch.Tensor:
        return self.data.labels.cpu()

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.data.channels, self.data.height, self.data.width

    def batches(
        self,
        memory: ImageSet | None,
        batch_size: int,
        generator: torch.Generator | None,
        sampler: str = "shuffle",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return epoch_batches(self.data, memory, batch_size, generator, sampler)

    def ordered(self, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, len(self.data), batch_size):
            yield self.data.images[s : s + batch_size], self.data.labels[s : s + batch_size]

    def subset(self, index: torch.Tensor | Sequence[int]) -> InMemory:
        return InMemory(self.data.subset(index))

    def map_labels(self, lut: torch.Tensor, classes: list[str]) -> InMemory:
        labels = lut.to(self.data.device)[self.data.labels]
        return InMemory(ImageSet(self.data.images, labels, classes))

    def to(self, device: torch.device | str) -> InMemory:
        return InMemory(self.data.to(device))


class Skips:
    """Unreadable files met while reading for training: each reported once (``note``) and
    counted in ``report``, or, with ``strict``, the first one raised as a ``DataError``."""

    def __init__(self, strict: bool = False, note: Callable[[str], None] | None = None) -> None:
        self.strict, self.note = strict, note
        self.report = ReadReport()
        self._seen: set[int] = set()

    def __call__(self, bad: list[tuple[int, str]]) -> None:
        for pos, msg in bad:
            if self.strict:
                raise DataError(msg)
            if pos not in self._seen:
                self._seen.add(pos)
                self.report.note(msg)
                if self.note is not None:
                    self.note(f"skipped an unreadable file: {msg}")

    def positions(self) -> np.ndarray:
        """The collection positions of the unreadable files met so far."""
        return np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))


class _PlanBatches:
    """A ``DataLoader`` batch sampler over one epoch's plan: each batch's positions become a
    list only when the loader asks for it, so the plan costs 8 bytes per item."""

    def __init__(self, plan: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        self.plan = plan

    def __iter__(self) -> Iterator[list[int]]:
        return (idx.tolist() for idx, _ in self.plan)

    def __len__(self) -> int:
        return len(self.plan)


@dataclasses.dataclass(eq=False)
class Streamed:
    """Items of a :class:`Collection` read from their files at the model's input size.

    ``item_labels``: one label per item of the collection (its own labels by default), an
    index into ``classes``; ``positions``: the collection's items this source holds (all by
    default). ``workers`` processes decode; batches land on ``device``. ``skips`` is shared
    by the subsets of one source, so a broken file is reported once whatever reads it.
    """

    coll: Collection
    pre: Preprocess
    workers: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    skips: Skips = dataclasses.field(default_factory=Skips)
    positions: np.ndarray | None = None
    item_labels: np.ndarray | None = None
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.coll)
        if self.positions is None:
            self.positions = np.arange(n, dtype=np.int64)
        if self.item_labels is None:
            self.item_labels = self.coll.labels.astype(np.int64)
        if self.classes is None:
            self.classes = list(self.coll.classes)
        self.device = torch.device(self.device)

    def __len__(self) -> int:
        return len(self.positions)

    def __repr__(self) -> str:
        return (
            f"Streamed({self.coll.spec!r}, n={len(self)}, input={self.input_size}, "
            f"workers={self.workers}, device={self.device})"
        )

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.item_labels[self.positions])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.pre.input_size

    def _read(
        self, plan: _PlanBatches | None, batch_size: int = 64
    ) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """``(images, labels)`` on the device per batch (None, None where none was read)."""
        pin = self.device.type == "cuda"
        loader = batch_loader(
            self.coll, self.pre, self.positions, batch_size, self.workers, plan, pin
        )
        for pos, images, bad in loader:
            self.skips(bad)
            if images is None:
                yield None, None
                continue
            labels = torch.from_numpy(self.item_labels[pos.numpy()])
            yield (
                images.to(self.device, non_blocking=pin),
                labels.to(self.device, non_blocking=pin),
            )

    def batches(
        self,
        memory: ImageSet | None,
        batch_size: int,
        generator: torch.Generator | None,
        sampler: str = "shuffle",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of the sampler's batches (see the module docstring); a batch left with
        fewer than two images by unreadable files is dropped (BatchNorm).

        The epoch's plan is drawn from ``generator`` before the first batch, because the
        workers read ahead. The ``shuffle`` sampler draws its whole epoch there in memory too,
        so the trainer's augmentation draws, which follow each batch, match. The ``balanced``
        sampler with memory draws per batch in memory: there the augmentation draws fall
        between the plan's draws on one path and after them on the other, and the two paths
        train on equally distributed but different batches."""
        if memory is not None and len(memory) and memory.device != self.device:
            memory = memory.to(self.device)
        m = len(memory) if memory is not None else 0
        # The whole epoch's plan is drawn first: the loader asks for batches ahead of the
        # training (prefetching), and the generator also draws each batch's augmentation.
        plan = list(epoch_plan(len(self), m, batch_size, generator, sampler, "cpu"))
        for (images, labels), (_, idx_mem) in zip(
            self._read(_PlanBatches(plan)), plan, strict=True
        ):
            if images is None:
                continue
            if idx_mem is not None:
                idx_mem = idx_mem.to(memory.device)
                images = torch.cat([images, memory.images[idx_mem]])
                labels = torch.cat([labels, memory.labels[idx_mem]])
            if len(labels) >= 2:
                yield images, labels

    def ordered(self, batch_size: int = 64) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self._read(None, batch_size):
            if images is not None:
                yield images, labels

    def subset(self, index: torch.Tensor | Sequence[int]) -> Streamed:
        idx = as_index(index, torch.device("cpu")).numpy()
        return dataclasses.replace(self, positions=self.positions[idx])

    def unreadable(self) -> int:
        """How many of this source's items were found unreadable so far."""
        return int(np.isin(self.positions, self.skips.positions()).sum())

    def map_labels(self, lut: torch.Tensor, classes: list[str]) -> Streamed:
        table = lut.cpu().numpy().astype(np.int64)
        labels = np.where(self.item_labels >= 0, table[np.maximum(self.item_labels, 0)], -1)
        return dataclasses.replace(self, item_labels=labels, classes=list(classes))

    def to(self, device: torch.device | str) -> Streamed:
        return dataclasses.replace(self, device=torch.device(device))


def as_source(data: ImageSet | BatchSource) -> BatchSource:
    """``data`` as a batch source (an :class:`ImageSet` is wrapped in :class:`InMemory`)."""
    return InMemory(data) if isinstance(data, ImageSet) else data


class ChannelMoments:
    """Per-channel mean and std of uint8 images in [0, 1] units, from exact integer sums: the
    result does not depend on how the images were batched or in which order they came."""

    def __init__(self) -> None:
        self.sums: list[int] = []
        self.squares: list[int] = []
        self.pixels = 0

    def add(self, images: torch.Tensor) -> None:
        """Add a uint8 ``(B, C, H, W)`` batch (a 4-byte copy of it is made on its device)."""
        x = images.to(torch.int32)
        s = x.sum(dim=(0, 2, 3), dtype=torch.int64).tolist()
        q = (x * x).sum(dim=(0, 2, 3), dtype=torch.int64).tolist()  # 255^2 fits int32
        if not self.sums:
            self.sums, self.squares = [0] * len(s), [0] * len(s)
        self.sums = [a + b for a, b in zip(self.sums, s, strict=True)]
        self.squares = [a + b for a, b in zip(self.squares, q, strict=True)]
        self.pixels += images.shape[0] * images.shape[2] * images.shape[3]

    def result(self) -> tuple[list[float], list[float]]:
        if not self.pixels:
            raise DataError("channel statistics of no image")
        n = self.pixels
        mean = [s / (255 * n) for s in self.sums]
        var = [q / (255 * 255 * n) - m * m for q, m in zip(self.squares, mean, strict=True)]
        return mean, [max(v, 0.0) ** 0.5 for v in var]


def source_stats(
    source: BatchSource, limit: int | None = STATS_IMAGES, seed: int = 0, batch_size: int = 64
) -> tuple[list[float], list[float]]:
    """Channel mean and std of ``source``'s images: all of them when there are at most
    ``limit`` (None: no limit), else ``limit`` drawn at random with ``seed``."""
    n = len(source)
    if limit is not None and n > limit:
        g = torch.Generator().manual_seed(seed)
        source = source.subset(torch.randperm(n, generator=g)[:limit].sort().values)
    acc = ChannelMoments()
    for images, _ in source.ordered(batch_size):
        acc.add(images)
    return acc.result()


def _host_available() -> int | None:
    """The host's available memory in bytes: ``MemAvailable`` (Linux), else the physical
    memory (sysconf), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes available for data: the host's, and on a CUDA device the smaller of that and the
    device's free memory (the data is decoded on the host, then held on the device); None
    where the platform does not say."""
    device = torch.device(device)
    host = _host_available()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free if host is None else min(host, free)
    return host


class MemoryBudget:
    """What in-memory data may still take, in bytes; sets that do not fit are streamed."""

    def __init__(self, total: int) -> None:
        self.total = self.left = int(total)

    @classmethod
    def of(cls, device: torch.device | str = "cpu", share: float = IN_MEMORY_SHARE) -> MemoryBudget:
        """``share`` of :func:`available_memory` (of 4 GiB where it is unknown)."""
        return cls(int(share * (available_memory(device) or _FALLBACK_MEMORY)))

    def take(self, need: int) -> bool:
        """True, and ``need`` bytes fewer left, when they fit."""
        if need > self.left:
            return False
        self.left -= need
        return True

    def __repr__(self) -> str:
        return f"MemoryBudget({self.left / 2**30:.2f} of {self.total / 2**30:.2f} GiB left)"
