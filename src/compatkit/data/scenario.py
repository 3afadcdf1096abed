"""Class-incremental scenario: a dataset cut into a sequence of tasks of disjoint classes.

IAM-CL2R protocol (Biondi et al., CVPR 2024, Sec. 5; docs/method.md §4):
the local data is the CIFAR-100 training set sub-sampled to 300 images per
class; the first task has 10 classes and every later task 15 (or 3). Here that
is ``ClassIncremental(data, class_order, initial_increment=10, increment=15,
images_per_class=300)``.

Shaped after Continuum's scenarios (an indexable sequence of tasks whose
constructor validates and names bad values): an impossible split is refused
with a ValueError before any training starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .imageset import ImageSet

__all__ = ["ClassIncremental", "Task", "class_generator"]

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant: spreads (seed, class) pairs apart


def class_generator(seed: int, label: int, salt: int = 0) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, label, salt)``.

    Drawing each class's random subset from its own generator makes the choice
    independent of class order, of which other classes are present and of how
    many draws happened before: a run resumed from a checkpoint picks exactly the
    images an uninterrupted run would have picked. ``salt`` separates the uses
    (scenario sub-sampling vs rehearsal selection) so they are not correlated.
    """
    value = (int(seed) * _MIX + int(label) * 1_000_003 + int(salt) * 7_919) % (1 << 63)
    return torch.Generator().manual_seed(value)


_SALT_SUBSAMPLE = 1


@dataclass
class Task:
    """One step of the scenario."""

    task_id: int
    classes: list[int]
    """Original dataset labels introduced by this task, in class order."""
    data: ImageSet
    """Only those classes (``images_per_class`` each when sub-sampled), dataset order."""


class ClassIncremental:
    """An indexable sequence of :class:`Task` with disjoint classes.

    Task 0 holds the first ``initial_increment`` classes of ``class_order``, every later
    task the next ``increment``. ``class_order`` may use only some of the dataset's
    classes; the others are never seen. With ``images_per_class`` each class keeps that
    many images chosen at random (reproducible from ``seed``, independent of the order).
    """

    def __init__(
        self,
        data: ImageSet,
        class_order: Sequence[int],
        initial_increment: int,
        increment: int,
        images_per_class: int | None = None,
        seed: int = 0,
    ) -> None:
        order = [int(c) for c in class_order]
        if not order:
            raise ValueError("class_order is empty")
        dupes = sorted({c for c in order if order.count(c) > 1})
        if dupes:
            raise ValueError(f"class_order lists classes {dupes} more than once")
        self.num_tasks = self.num_tasks_for(len(order), initial_increment, increment)

        labels = data.labels.cpu()
        counts = torch.bincount(labels, minlength=max(len(data.classes), max(order) + 1))
        absent = [c for c in order if c < 0 or c >= counts.numel() or int(counts[c]) == 0]
        if absent:
            raise ValueError(
                f"class_order names classes {absent} that have no images in the data "
                f"(present labels: {data.present_classes()})"
            )
        if images_per_class is not None:
            if images_per_class < 1:
                raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
            short = {c: int(counts[c]) for c in order if int(counts[c]) < images_per_class}
            if short:
                raise ValueError(
                    f"images_per_class={images_per_class} but these classes have fewer "
                    f"images (class: count): {short}"
                )

        self.data = data
        self.class_order = order
        self.initial_increment = int(initial_increment)
        self.increment = int(increment)
        self.images_per_class = images_per_class
        self.seed = int(seed)

        # Per class: positions in ``data`` (ascending), sub-sampled if asked.
        self._class_index: dict[int, torch.Tensor] = {}
        for c in order:
            idx = (labels == c).nonzero().squeeze(1)
            if images_per_class is not None:
                g = class_generator(self.seed, c, _SALT_SUBSAMPLE)
                idx = idx[torch.randperm(idx.numel(), generator=g)[:images_per_class]].sort()[0]
            self._class_index[c] = idx

    @staticmethod
    def num_tasks_for(num_classes: int, initial_increment: int, increment: int) -> int:
        """Number of tasks of a split, or a ValueError saying why it is impossible."""
        if initial_increment <= 0 or increment <= 0:
            raise ValueError(
                f"increments must be positive, got initial_increment={initial_increment}, "
                f"increment={increment}"
            )
        if initial_increment > num_classes:
            raise ValueError(
                f"initial_increment={initial_increment} is more than the {num_classes} classes"
            )
        rest = num_classes - initial_increment
        if rest % increment:
            raise ValueError(
                f"{num_classes} classes cannot be split as {initial_increment} then tasks of "
                f"{increment}: the remaining {rest} classes are not a multiple of {increment}"
            )
        return 1 + rest // increment

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    def task_classes(self, i: int) -> list[int]:
        """Labels introduced by task ``i`` (negative indices count from the end)."""
        i = self._check(i)
        start = 0 if i == 0 else self.initial_increment + (i - 1) * self.increment
        stop = self.initial_increment + i * self.increment
        return self.class_order[start:stop]

    def seen_classes(self, i: int) -> list[int]:
        """Labels of tasks ``0..i`` together, in class order."""
        i = self._check(i)
        return self.class_order[: self.initial_increment + i * self.increment]

    def _check(self, i: int) -> int:
        if not isinstance(i, int):
            raise TypeError(f"task index must be an int, got {type(i).__name__}")
        j = i + self.num_tasks if i < 0 else i
        if not 0 <= j < self.num_tasks:
            raise IndexError(f"task {i} out of range for {self.num_tasks} tasks")
        return j

    def __len__(self) -> int:
        return self.num_tasks

    def __getitem__(self, i: int) -> Task:
        classes = self.task_classes(i)
        idx = torch.cat([self._class_index[c] for c in classes]).sort()[0]
        return Task(task_id=self._check(i), classes=classes, data=self.data.subset(idx))

    def __iter__(self) -> Iterator[Task]:
        for i in range(self.num_tasks):
            yield self[i]

    def __repr__(self) -> str:
        return (
            f"ClassIncremental({self.num_tasks} tasks, {self.num_classes} classes: "
            f"{self.initial_increment} then {self.increment} per task, "
            f"images_per_class={self.images_per_class}, seed={self.seed})"
        )
