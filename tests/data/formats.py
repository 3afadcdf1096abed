"""Small files of the real dataset formats, written the way the official files are, so the
loaders are tested on their exact on-disk format without the datasets themselves."""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compatkit.data.cifar import CifarFormatError

__all__ = ["write_cifar_batch", "write_imagenet32_batch"]

_ROW = 3 * 32 * 32  # bytes per 32x32 RGB image


def write_cifar_batch(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: list[int],
    labels_key: bytes = b"labels",
    protocol: int = 2,
) -> None:
    """Write ``(N, 3, 32, 32)`` uint8 ``images`` as an official-format CIFAR batch file.
    Protocol 2 is what the distributed Python 2 files use.

    Labels are stored as a list of Python ints, as in the official files: ``list()`` of a
    numpy array would pickle numpy scalar objects, which the restricted unpickler refuses.
    """
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    if data.shape[1] != 3 * 32 * 32:
        raise CifarFormatError(f"images must be (N, 3, 32, 32), got {np.shape(images)}")
    stored = [int(y) for y in np.asarray(labels).reshape(-1)]
    if len(stored) != len(data):
        raise CifarFormatError(f"{len(data)} images but {len(stored)} labels")
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"batch", b"data": data, labels_key: stored}, f, protocol)


def write_imagenet32_batch(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: Sequence[int],
    npz: bool = False,
    protocol: int = pickle.DEFAULT_PROTOCOL,
) -> Path:
    """Write ``(N, 3, 32, 32)`` uint8 ``images`` with **0-based** ``labels`` as an official
    batch (labels stored 1-based, plus the ``mean`` row of the train batches), for tests and
    for exporting a class subset that loads in a fraction of the memory.

    ``npz=True`` writes ``<path>.npz`` (the suffix is added when missing); the path written
    is returned.
    """
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    if data.shape[1] != _ROW:
        raise ValueError(f"images must be (N, 3, 32, 32), got {np.shape(images)}")
    stored = [int(y) + 1 for y in labels]
    if len(stored) != len(data):
        raise ValueError(f"{len(data)} images but {len(stored)} labels")
    mean = data.mean(axis=0) if len(data) else np.zeros(_ROW)
    out = Path(path)
    if npz:
        out = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")
        np.savez(out, data=data, labels=np.asarray(stored, dtype=np.int64), mean=mean)
    else:
        with open(out, "wb") as f:
            pickle.dump({"data": data, "labels": stored, "mean": mean}, f, protocol)
    return out
