"""A labelled image dataset held as two tensors.

Small image datasets (MNIST-like, CIFAR) fit in memory many times over, so they
are kept as one ``uint8`` tensor of shape ``(N, C, H, W)`` plus an ``int64`` label
vector, on the GPU when there is one. Keeping them ``uint8`` costs a quarter of
the memory of float32 and lets augmentation and normalisation run on whole
batches right where the data lives (no PIL, no per-sample Python, no workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["ImageSet", "as_index"]


def as_index(index: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    """Turn ``index`` (a tensor of positions, a boolean mask or a list of ints) into a tensor
    on ``device``.

    An empty Python list would become a float tensor with ``torch.as_tensor``; the dtype is
    forced to int64 so that "select nothing" works like any other selection.
    """
    if isinstance(index, torch.Tensor):
        if index.dtype != torch.bool and (index.dtype.is_floating_point or index.is_complex()):
            raise TypeError(f"index tensor must be integer or bool, got {index.dtype}")
        return index.to(device)
    return torch.as_tensor(list(index), dtype=torch.int64, device=device)


@dataclass
class ImageSet:
    """Images and labels of one split of one dataset.

    ``labels[i]`` is an index into ``classes`` (the class names). Selecting classes or
    samples keeps the original labels and the full ``classes`` list, so label ``k`` means
    the same class in every subset of a dataset; remapping to a head's rows is the class
    map's job (``compatkit.simplex.ClassMap``), not the data's.
    """

    images: torch.Tensor
    """``uint8``, ``(N, C, H, W)``, contiguous."""
    labels: torch.Tensor
    """``int64``, ``(N,)``, on the same device as ``images``."""
    classes: list[str]
    """Class names; label ``k`` is ``classes[k]``."""

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            got = getattr(self.images, "dtype", type(self.images).__name__)
            raise TypeError(f"ImageSet.images must be a uint8 tensor, got {got}")
        if self.images.dim() != 4:
            raise ValueError(
                f"ImageSet.images must have shape (N, C, H, W), got {tuple(self.images.shape)}"
            )
        if not isinstance(self.labels, torch.Tensor):
            raise TypeError(f"ImageSet.labels must be a tensor, got {type(self.labels).__name__}")
        if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
            raise TypeError(f"ImageSet.labels must be an integer tensor, got {self.labels.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ImageSet.labels must have shape ({self.images.shape[0]},) to match the images, "
                f"got {tuple(self.labels.shape)}"
            )
        if self.labels.device != self.images.device:
            raise ValueError(
                f"ImageSet.labels are on {self.labels.device} but the images on "
                f"{self.images.device}"
            )
        self.images = self.images.contiguous()
        self.labels = self.labels.to(torch.int64)
        self.classes = list(self.classes)
        if self.labels.numel() and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)
        ):
            raise ValueError(
                f"ImageSet labels span [{int(self.labels.min())}, {int(self.labels.max())}] but "
                f"there are {len(self.classes)} class names"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageSet(n={len(self)}, shape={tuple(self.images.shape[1:])}, "
            f"classes={len(self.classes)}, device={self.device})"
        )

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def height(self) -> int:
        return int(self.images.shape[2])

    @property
    def width(self) -> int:
        return int(self.images.shape[3])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def present_classes(self) -> list[int]:
        """Sorted labels that have at least one sample here."""
        return [int(c) for c in torch.unique(self.labels).tolist()]

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageSet:
        """The samples at ``index`` (positions or a boolean mask), copied, in that order."""
        idx = as_index(index, self.device)
        return ImageSet(self.images[idx], self.labels[idx], self.classes)

    def to(self, device: torch.device | str) -> ImageSet:
        """The same set on ``device``; images stay ``uint8`` (normalise per batch instead)."""
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)

    def select_classes(self, classes: Sequence[int]) -> ImageSet:
        """Samples whose label is in ``classes``, in dataset order, original labels kept."""
        wanted = torch.as_tensor(list(classes), dtype=torch.int64, device=self.device)
        return self.subset(torch.isin(self.labels, wanted).nonzero().squeeze(1))
