"""ImageNet32x32 (Chrabaszcz, Loshchilov and Hutter, "A Downsampled Variant of ImageNet as an
Alternative to the CIFAR datasets", 2017) in its official distribution format.

The paper's replacement models are ResNet-18s trained on the first 100, 300 and 600
ImageNet32 classes (docs/method.md §4); this loader lets a user with the data train them.

Format (the authors' ``image2numpy_imagenet_{train,val}.py``): ``Imagenet32_train/`` holds
``train_data_batch_1`` .. ``train_data_batch_10`` and ``Imagenet32_val/`` holds ``val_data``,
each a pickled dict with

- ``data``: ``uint8`` array of shape ``(N, 3072)``, each row the red, green and blue 32x32
  planes in that order, row-major (CIFAR's layout);
- ``labels``: list of ``N`` ints, **1-based** (1..1000, the index column of ``map_clsloc.txt``);
- ``mean``: the mean training image (train batches only; unused here).

A later distribution (``Imagenet32_train_npz/``, ``Imagenet32_val_npz/``) stores the same
arrays as ``<name>.npz``; both are read, the npz form with ``allow_pickle=False`` and the
pickle form through :class:`~compatkit.data.cifar.RestrictedUnpickler`, so neither can run
code. Labels are returned 0-based (label ``k`` = line ``k + 1`` of ``map_clsloc.txt``).

Memory: the full training split is 1,281,167 x 3,072 bytes = 3.9 GB of ``uint8`` (and about
twice that while the batches are joined). ``classes=`` keeps only some labels, filtering each
batch as it is read, so the first 100 classes cost about 0.4 GB. The run configuration
(``DataSource.classes``) selects classes *after* loading the whole split, because
``compatkit.protocol.plan`` calls loaders without a class list: a configuration that trains
providers on ImageNet32 needs the 3.9 GB split in host memory once (shared by all providers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .cifar import RestrictedUnpickler, UnsafePickleError
from .imageset import ImageSet
from .missing import DatasetNotFoundError

__all__ = [
    "IMAGENET32_CLASSES",
    "IMAGENET32_FILES",
    "IMAGENET32_FOLDERS",
    "ImageNet32FormatError",
    "find_imagenet32",
    "load_imagenet32",
    "read_class_map",
    "read_imagenet32_batch",
]

IMAGENET32_CLASSES = 1000
"""Number of classes; stored labels run 1..1000."""

IMAGENET32_FILES: dict[str, list[str]] = {
    "train": [f"train_data_batch_{i}" for i in range(1, 11)],
    "test": ["val_data"],
}
"""Batch files of each split (without the ``.npz`` suffix of the npz distribution)."""

IMAGENET32_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("Imagenet32_train", "Imagenet32_train_npz"),
    "test": ("Imagenet32_val", "Imagenet32_val_npz"),
}
"""Folders the official archives extract to, looked for under the root."""

CLASS_MAP_FILE = "map_clsloc.txt"
"""ILSVRC devkit mapping, one ``<wnid> <1-based index> <name>`` line per class."""

_ROW = 3 * 32 * 32  # bytes per image: three 32x32 planes


class ImageNet32FormatError(DataError):
    """An ImageNet32 batch or class-map file does not have the expected content."""


# --------------------------------------------------------------------------- files


def _batch_path(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` (pickle) or ``folder/stem.npz``; the pickle wins when both exist."""
    for name in (stem, f"{stem}.npz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _search_folders(root: Path, split: str) -> list[Path]:
    return [root] + [root / f for f in IMAGENET32_FOLDERS[split]]


def find_imagenet32(root: Path, split: str) -> list[Path] | None:
    """The batch files of ``split`` under ``root``, or None when some are missing.

    ``root`` may be the folder holding the batch files, or a folder holding the extracted
    ``Imagenet32_train[_npz]/`` and ``Imagenet32_val[_npz]/`` folders. All batches of a split
    must be in one folder, so a half-extracted archive is not mixed with another copy.
    """
    if split not in IMAGENET32_FILES:
        raise ValueError(f"unknown split {split!r}; choose one of {list(IMAGENET32_FILES)}")
    for folder in _search_folders(root, split):
        paths = [_batch_path(folder, stem) for stem in IMAGENET32_FILES[split]]
        if all(p is not None for p in paths):
            return [p for p in paths if p is not None]
    return None


def _missing_report(root: Path, split: str) -> str:
    """Which files are missing in the most complete candidate folder (for error messages)."""
    best: tuple[int, Path, list[str]] | None = None
    for folder in _search_folders(root, split):
        missing = [s for s in IMAGENET32_FILES[split] if _batch_path(folder, s) is None]
        found = len(IMAGENET32_FILES[split]) - len(missing)
        if found and (best is None or found > best[0]):
            best = (found, folder, missing)
    if best is None:
        return "no batch file found"
    return f"{best[1]} lacks {', '.join(best[2])}"


# --------------------------------------------------------------------------- reading


def _entry(batch: dict, key: str, where: str) -> Any:
    """``batch[key]`` whether the pickle was written by Python 3 (str keys) or 2 (bytes)."""
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise ImageNet32FormatError(f"{where}: no {key!r} entry (keys: {sorted(map(str, batch))})")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # Streamed from the file: a 390 MB batch is not also held as one bytes object.
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except Exception as e:  # truncated stream, garbage bytes
        raise ImageNet32FormatError(f"{path}: not a readable ImageNet32 pickle ({e!r})") from e
    if not isinstance(obj, dict):
        raise ImageNet32FormatError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if k in ("data", "labels")}
    except ValueError as e:  # object arrays need pickle: refused, like any pickle in an npz
        raise ImageNet32FormatError(f"{path}: not a plain-array npz file ({e})") from e
    except Exception as e:
        raise ImageNet32FormatError(f"{path}: not a readable npz file ({e!r})") from e


def read_imagenet32_batch(
    path: str | os.PathLike[str], classes: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: ``(images (N, 3, 32, 32) uint8, labels (N,) int64, 0-based)``.

    The format is chosen by the suffix (``.npz`` or pickle). ``classes`` (0-based labels)
    keeps only those images, before the batch is copied, which bounds the memory of a
    class subset by the subset's size.
    """
    path = Path(path)
    batch = _read_npz(path) if path.suffix == ".npz" else _read_pickle(path)
    data = np.asarray(_entry(batch, "data", str(path)))
    raw = _entry(batch, "labels", str(path))
    try:
        lab = np.asarray(raw)
    except Exception as e:  # ragged nested lists
        raise ImageNet32FormatError(f"{path}: labels are not a flat list of ints") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise ImageNet32FormatError(
            f"{path}: data must be uint8 of shape (N, {_ROW}), got {data.dtype} {data.shape}"
        )
    if lab.shape != (data.shape[0],) or (lab.size and lab.dtype.kind not in "iu"):
        raise ImageNet32FormatError(
            f"{path}: {data.shape[0]} images need {data.shape[0]} integer labels, got "
            f"{lab.dtype} {lab.shape}"
        )
    lab = lab.astype(np.int64) - 1  # stored 1-based
    if lab.size and (lab.min() < 0 or lab.max() >= IMAGENET32_CLASSES):
        raise ImageNet32FormatError(
            f"{path}: labels must lie in 1..{IMAGENET32_CLASSES} (1-based), got "
            f"{lab.min() + 1}..{lab.max() + 1}"
        )
    if classes is not None:
        keep = np.isin(lab, np.asarray(list(classes), dtype=np.int64))
        data, lab = data[keep], lab[keep]
    if not data.flags.writeable:  # protocol-5 pickles rebuild arrays over read-only bytes
        data = data.copy()
    # Rows are R, G, B planes of 32x32 row-major: exactly the (C, H, W) order.
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), lab


def read_class_map(path: str | os.PathLike[str]) -> list[str]:
    """Class names from ``map_clsloc.txt``: ``names[k]`` is the line whose index is ``k + 1``.

    The file is ordered by index, but it is read by the index column so that a reordered
    copy still names labels correctly; every index 1..1000 must appear exactly once.
    """
    path = Path(path)
    names: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 3 or not parts[1].isdigit():
            raise ImageNet32FormatError(
                f"{path}:{n}: expected '<wnid> <index> <name>', got {line!r}"
            )
        idx = int(parts[1])
        if not 1 <= idx <= IMAGENET32_CLASSES or idx in names:
            raise ImageNet32FormatError(f"{path}:{n}: index {idx} out of range or repeated")
        names[idx] = " ".join(parts[2:])
    if len(names) != IMAGENET32_CLASSES:
        raise ImageNet32FormatError(
            f"{path}: {len(names)} classes listed, expected {IMAGENET32_CLASSES}"
        )
    return [names[i] for i in range(1, IMAGENET32_CLASSES + 1)]


def _class_names(root: Path, batch_folder: Path) -> list[str]:
    for folder in dict.fromkeys((batch_folder, root, batch_folder.parent)):
        if (folder / CLASS_MAP_FILE).is_file():
            return read_class_map(folder / CLASS_MAP_FILE)
    return [f"class_{i}" for i in range(IMAGENET32_CLASSES)]


def load_imagenet32(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    classes: Sequence[int] | None = None,
) -> ImageSet:
    """ImageNet32x32: 32x32 RGB, 1000 classes, 1,281,167 train / 50,000 val (= ``test``) images.

    ``root`` as for every dataset (argument, then ``$COMPATKIT_IMAGENET32``, then
    ``$COMPATKIT_DATA/imagenet32``, then the cache folder). ``classes`` (0-based labels)
    filters while reading; labels keep their dataset value and ``classes`` of the result
    lists all 1000 names (from ``map_clsloc.txt`` next to the batches or in the root, when
    present, else ``class_<i>``). There is no automatic download: the files need an
    image-net.org account.
    """
    from .datasets import (  # the registry imports this module
        dataset_root,
        env_var,
        searched_locations,
    )

    base = dataset_root("imagenet32", root)
    paths = find_imagenet32(base, split)
    if paths is None:
        archive = IMAGENET32_FOLDERS[split][0]
        raise DatasetNotFoundError(
            f"ImageNet32 ({split})",
            f"{searched_locations('imagenet32', root)}; {_missing_report(base, split)}",
            env=env_var("imagenet32"),
            holding="the extracted Imagenet32_train/ and Imagenet32_val/ folders",
            how=f"get {archive}.zip (or the _npz variant) from "
            "https://image-net.org/download-images (account needed; it cannot be downloaded "
            f"automatically{', download=True is ignored' if download else ''}) and extract it",
        )
    if classes is not None:
        bad = [c for c in classes if not 0 <= int(c) < IMAGENET32_CLASSES]
        if bad:
            raise DataError(f"classes {bad} outside 0..{IMAGENET32_CLASSES - 1} (0-based)")
    images, labels = [], []
    for p in paths:
        x, y = read_imagenet32_batch(p, classes)
        images.append(torch.from_numpy(x))
        labels.append(torch.from_numpy(y))
    names = _class_names(base, paths[0].parent)
    return ImageSet(torch.cat(images), torch.cat(labels), names)
