"""Rehearsal memory: a few stored images of every class seen so far.

IAM-CL2R reference (Biondi et al., CVPR 2024; docs/method.md §4): 20 images
per class, chosen at random, kept for every seen class; every batch after the
first task is half new data, half memory (see :mod:`compatkit.data.sampler`).

Each class's images are chosen with a generator seeded from ``(seed, class)``
only, so the memory after task t is the same whether the run went straight
through or was resumed from a checkpoint, and the state to save is just the
stored tensors.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from .imageset import ImageSet
from .scenario import class_generator

__all__ = ["RehearsalMemory"]

_SALT_MEMORY = 2


class RehearsalMemory:
    """At most ``per_class`` images of each class, added once when the class first appears."""

    def __init__(self, per_class: int, seed: int = 0) -> None:
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1 image, got {per_class}")
        self.per_class = int(per_class)
        self.seed = int(seed)
        self.classes: list[int] = []
        """Stored labels, in the order they were added."""
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._names: list[str] = []

    def __len__(self) -> int:
        return 0 if self._labels is None else int(self._labels.numel())

    def __repr__(self) -> str:
        return (
            f"RehearsalMemory(per_class={self.per_class}, classes={len(self.classes)}, "
            f"n={len(self)})"
        )

    def update(self, data: ImageSet) -> None:
        """Store ``per_class`` random images of every class of ``data`` not stored yet.

        A class with fewer images stores all of them. Classes already in memory are left
        as they are (the reference keeps its first random pick for the whole run). The stored
        images move to ``data``'s device.
        """
        if self._names and data.classes != self._names:
            raise ValueError(
                "RehearsalMemory.update got data whose class names differ from the stored ones "
                "(a different dataset?)"
            )
        self.to(data.device)  # the memory follows the data (a CPU-restored state joins the GPU)
        labels = data.labels.cpu()
        new = [c for c in torch.unique(labels).tolist() if c not in self.classes]
        if not new:
            return
        picks = []
        for c in new:
            idx = (labels == c).nonzero().squeeze(1)
            g = class_generator(self.seed, c, _SALT_MEMORY)
            picks.append(idx[torch.randperm(idx.numel(), generator=g)[: self.per_class]].sort()[0])
        sel = data.subset(torch.cat(picks))
        if self._images is None:
            self._images, self._labels = sel.images, sel.labels
        else:
            self._images = torch.cat([self._images, sel.images])
            self._labels = torch.cat([self._labels, sel.labels])
        self.classes += [int(c) for c in new]
        self._names = list(data.classes)

    def as_imageset(self) -> ImageSet | None:
        """The stored images as an ImageSet (labels are the original ones), None when empty."""
        if self._images is None or len(self) == 0:
            return None
        return ImageSet(self._images, self._labels, self._names)

    def to(self, device: torch.device | str) -> RehearsalMemory:
        """Move the stored images (in place); returns ``self``."""
        if self._images is not None:
            self._images = self._images.to(device)
            self._labels = self._labels.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only, so ``torch.load(..., weights_only=True)`` restores it.

        Class names are stored as the UTF-8 bytes of a JSON list in a uint8 tensor.
        """
        empty = self._images is None
        return {
            "per_class": self.per_class,
            "seed": self.seed,
            "classes": torch.tensor(self.classes, dtype=torch.int64),
            "images": torch.zeros(0, dtype=torch.uint8) if empty else self._images.cpu(),
            "labels": torch.zeros(0, dtype=torch.int64) if empty else self._labels.cpu(),
            "class_names": torch.tensor(list(json.dumps(self._names).encode()), dtype=torch.uint8),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (on the CPU; call :meth:`to` to move it)."""
        missing = {"per_class", "seed", "classes", "images", "labels", "class_names"} - set(state)
        if missing:
            raise KeyError(f"RehearsalMemory state is missing {sorted(missing)}")
        self.per_class = int(state["per_class"])
        self.seed = int(state["seed"])
        self.classes = [int(c) for c in state["classes"].tolist()]
        self._names = json.loads(bytes(state["class_names"].tolist()).decode())
        images, labels = state["images"], state["labels"]
        if labels.numel() == 0:
            self._images = self._labels = None
        else:
            self._images, self._labels = images, labels
            stored = set(labels.tolist())
            if stored != set(self.classes):
                raise ValueError("RehearsalMemory state: stored labels do not match its classes")
            counts = torch.bincount(labels)
            if int(counts.max()) > self.per_class:
                raise ValueError(
                    f"RehearsalMemory state holds {int(counts.max())} images of one class, more "
                    f"than per_class={self.per_class}"
                )
