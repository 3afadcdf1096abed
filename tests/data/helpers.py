"""Shared builders for the data tests: small, unique, traceable images."""

from __future__ import annotations

import torch

from compatkit.data import ImageSet


def make_set(
    counts: list[int],
    channels: int = 3,
    size: int = 8,
    seed: int = 0,
    shuffle: bool = True,
) -> ImageSet:
    """An ImageSet with ``counts[k]`` images of class ``k``.

    Every image is unique: pixel (0, 0, 0) holds the sample's position modulo 256 and
    pixel (0, 0, 1) its position divided by 256, so tests can tell samples apart and
    trace where each came from (``sample_ids``).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), k, dtype=torch.int64) for k, n in enumerate(counts)])
    if shuffle:
        labels = labels[torch.randperm(labels.numel(), generator=g)]
    n = labels.numel()
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    ids = torch.arange(n)
    images[:, 0, 0, 0] = (ids % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (ids // 256).to(torch.uint8)
    return ImageSet(images, labels, [f"class{k}" for k in range(len(counts))])


def sample_ids(images: torch.Tensor) -> torch.Tensor:
    """Inverse of the id encoding of :func:`make_set`."""
    return images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()
