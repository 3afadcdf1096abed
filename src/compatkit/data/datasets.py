"""Dataset registry: where each dataset lives, how it is loaded, its channel statistics.

Every loader returns an :class:`~compatkit.data.imageset.ImageSet` (uint8 images,
int64 labels, class names) and fails with a
:class:`~compatkit.data.missing.DatasetNotFoundError` (a ``DataError`` and a
``FileNotFoundError``) that says where it looked, why a download failed, and how
to get the data, before any training starts.

Where a dataset is looked for (:func:`dataset_root`), first match wins:

1. the ``root`` argument;
2. the environment variable ``COMPATKIT_<NAME>`` (``COMPATKIT_FASHION_MNIST``,
   ``COMPATKIT_MNIST``, ``COMPATKIT_CIFAR10``, ...);
3. ``$COMPATKIT_DATA/<name>`` when that folder exists;
4. the system location of a distribution package, when it exists (Debian's
   ``dataset-fashion-mnist`` installs under ``/usr/share/datasets``);
5. ``~/.cache/compatkit/<name>`` (``$XDG_CACHE_HOME`` respected) when it exists.

When none of 3-5 exists, the answer is the folder a download would write to:
``$COMPATKIT_DATA/<name>`` if that variable is set, else the cache folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .cifar import CIFAR_LAYOUTS, find_cifar, load_cifar
from .download import DownloadError, download_file
from .folder import load_image_folder
from .idx import IdxFormatError, read_idx
from .imagenet32 import load_imagenet32
from .imageset import ImageSet
from .missing import DatasetNotFoundError

__all__ = [
    "DATASETS",
    "DATASET_STATS",
    "SYSTEM_LOCATIONS",
    "DatasetNotFoundError",
    "canonical_name",
    "channel_stats",
    "dataset_root",
    "env_var",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_fashion_mnist",
    "load_folder",
    "load_mnist",
    "searched_locations",
    "stats_for",
]

SYSTEM_LOCATIONS: dict[str, Path] = {
    # Debian/Ubuntu package "dataset-fashion-mnist" (its documented install location).
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
}
"""Folders where an operating-system package puts a dataset."""

SYSTEM_PACKAGES: dict[str, str] = {"fashion-mnist": "dataset-fashion-mnist"}
"""The Debian/Ubuntu package that installs a dataset into its SYSTEM_LOCATIONS folder."""

SPLITS = ("train", "test")

DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # Per-channel mean and standard deviation of the training split, pixel values in [0, 1].
    # Fashion-MNIST recomputed from the official files: 0.28604, 0.35302.
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
"""``name -> (mean, std)`` per channel, in [0, 1] units, for :func:`~compatkit.data.to_float`.
An image folder has none: compute them with :func:`channel_stats`."""

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "image-folder": "folder",
    "imagefolder": "folder",
}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def _cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "compatkit"


def env_var(name: str) -> str:
    """The per-dataset environment variable, e.g. ``COMPATKIT_FASHION_MNIST``."""
    return "COMPATKIT_" + canonical_name(name).upper().replace("-", "_")


def _candidates(name: str) -> list[tuple[str, Path]]:
    """Searched locations 3-5 of the module docstring, as (why, path)."""
    found = []
    data = os.environ.get("COMPATKIT_DATA")
    if data:
        found.append(("$COMPATKIT_DATA", Path(data).expanduser() / name))
    if name in SYSTEM_LOCATIONS:
        found.append(("system package", SYSTEM_LOCATIONS[name]))
    found.append(("cache", _cache_home() / name))
    return found


def dataset_root(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder to load dataset ``name`` from (resolution order in the module docstring)."""
    name = canonical_name(name)
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(env_var(name))
    if env:
        return Path(env).expanduser()
    for _, path in _candidates(name):
        if path.is_dir():
            return path
    # Nothing exists yet: the download target, never the (read-only) system location.
    data = os.environ.get("COMPATKIT_DATA")
    return Path(data).expanduser() / name if data else _cache_home() / name


def searched_locations(name: str, root: str | os.PathLike[str] | None) -> str:
    """Human-readable account of the resolution, for 'not found' messages."""
    if root is not None:
        return f"the root argument ({Path(root).expanduser()})"
    if os.environ.get(env_var(name)):
        return f"${env_var(name)} ({os.environ[env_var(name)]})"
    tried = [f"{why} {path}" for why, path in _candidates(name)]
    return f"${env_var(name)} (unset), then " + ", then ".join(tried)


# --------------------------------------------------------------------------- MNIST family

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class _IdxSpec:
    def __init__(
        self,
        title: str,
        subdir: str,
        base_url: str,
        md5: dict[str, str],
        classes: list[str],
    ) -> None:
        self.title = title
        self.subdir = subdir  # torchvision's layout: <root>/<subdir>/raw/
        self.base_url = base_url
        self.md5 = md5  # of the published .gz files
        self.classes = classes


_IDX_SPECS = {
    "fashion-mnist": _IdxSpec(
        title="Fashion-MNIST",
        subdir="FashionMNIST",
        # Zalando Research's official bucket (github.com/zalandoresearch/fashion-mnist).
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        classes=[
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
    ),
    "mnist": _IdxSpec(
        title="MNIST",
        subdir="MNIST",
        # The PyTorch project's mirror of LeCun's files (same bytes, same MD5s).
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        classes=[str(d) for d in range(10)],
    ),
}


def _find_idx_file(root: Path, stem: str, subdir: str) -> Path | None:
    """``stem`` gzipped or not, in ``root``, ``root/raw`` or torchvision's ``root/<subdir>/raw``.

    The original MNIST distribution also names the unpacked files with a dot
    (``train-images.idx3-ubyte``); both spellings are accepted.
    """
    dotted = stem.replace("-idx", ".idx")
    for folder in (root, root / "raw", root / subdir / "raw"):
        for fname in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
            if (folder / fname).is_file():
                return folder / fname
    return None


def _load_idx_dataset(
    name: str, split: str = "train", root: str | None = None, download: bool = False
) -> ImageSet:
    spec = _IDX_SPECS[name]
    base = dataset_root(name, root)
    stems = _IDX_FILES[split]
    paths = [_find_idx_file(base, s, spec.subdir) for s in stems]
    failure = None
    if download and None in paths:
        try:
            for stem in stems:
                if _find_idx_file(base, stem, spec.subdir) is None:
                    fname = f"{stem}.gz"
                    download_file(spec.base_url + fname, base / fname, spec.md5[fname])
        except DownloadError as e:  # a ChecksumError (tampered file) propagates as it is
            failure = str(e)
        paths = [_find_idx_file(base, s, spec.subdir) for s in stems]
    if None in paths:
        missing = [s for s, p in zip(stems, paths, strict=True) if p is None]
        raise DatasetNotFoundError(
            f"{spec.title} ({split})",
            f"{searched_locations(name, root)}; "
            f"no {' / '.join(m + '[.gz]' for m in missing)} in {base}",
            env=env_var(name),
            holding="the four idx files (train-images-idx3-ubyte.gz, ...)",
            failure=failure,
            apt=SYSTEM_PACKAGES.get(name),
            download=True,
        )
    img_path, lab_path = paths
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise IdxFormatError(
            f"{img_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxFormatError(
            f"{lab_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{img_path} has {len(images)} images but {lab_path} has {len(labels)}"
        )
    if labels.size and labels.max() >= len(spec.classes):
        raise IdxFormatError(f"{lab_path}: label {labels.max()} >= {len(spec.classes)} classes")
    return ImageSet(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        spec.classes,
    )


def load_fashion_mnist(
    split: str = "train", root: str | None = None, download: bool = False
) -> ImageSet:
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale, 10 classes, 60k/10k images."""
    return _load_idx_dataset("fashion-mnist", split, root, download)


def load_mnist(split: str = "train", root: str | None = None, download: bool = False) -> ImageSet:
    """MNIST (LeCun et al. 1998): 28x28 grayscale digits, 60k/10k images."""
    return _load_idx_dataset("mnist", split, root, download)


# --------------------------------------------------------------------------- CIFAR


def _load_cifar_dataset(name: str, split: str, root: str | None, download: bool) -> ImageSet:
    layout = CIFAR_LAYOUTS[name]
    base = dataset_root(name, root)
    failure = None
    if download and find_cifar(layout, base) is None:
        try:
            download_file(layout.url, base / layout.archive, layout.md5)
        except DownloadError as e:  # a ChecksumError (tampered file) propagates as it is
            failure = str(e)
    if find_cifar(layout, base) is None:
        raise DatasetNotFoundError(
            layout.name,
            f"{searched_locations(name, root)}; {base} is neither the extracted {layout.folder}/ "
            f"folder, nor holds it, nor is or holds {layout.archive}",
            env=env_var(name),
            holding=f"{layout.archive} or its extracted {layout.folder}/ folder",
            failure=failure,
            download=True,
        )
    return load_cifar(layout, base, split)


def load_cifar10(split: str = "train", root: str | None = None, download: bool = False) -> ImageSet:
    """CIFAR-10 (Krizhevsky 2009): 32x32 RGB, 10 classes, 50k/10k images."""
    return _load_cifar_dataset("cifar10", split, root, download)


def load_cifar100(
    split: str = "train", root: str | None = None, download: bool = False
) -> ImageSet:
    """CIFAR-100 (Krizhevsky 2009): 32x32 RGB, 100 fine classes, 50k/10k images."""
    return _load_cifar_dataset("cifar100", split, root, download)


# --------------------------------------------------------------------------- image folder


def load_folder(
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ImageSet:
    """Your own images: ``root/<class>/*.png`` or ``root/{train,test}/<class>/*.png``."""
    if download:
        raise DataError("an image folder cannot be downloaded; pass root= pointing at it")
    base = dataset_root("folder", root)
    if not base.is_dir():
        raise DatasetNotFoundError(
            "image folder",
            f"{searched_locations('folder', root)}; {base} is not a folder",
            env=env_var("folder"),
            holding="one sub-folder of images per class (<class_name>/<image files>)",
        )
    return load_image_folder(base, split, image_size=image_size)


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., ImageSet]] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "folder": load_folder,
    "imagenet32": load_imagenet32,
}
"""``name -> loader(split="train", root=None, download=False, **options) -> ImageSet``."""


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    **options: Any,
) -> ImageSet:
    """Load ``split`` (``"train"`` or ``"test"``) of a registered dataset as an ImageSet on
    the CPU. ``options`` go to the loader (e.g. ``image_size=`` for ``"folder"``)."""
    key = canonical_name(name)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    return DATASETS[key](split=split, root=root, download=download, **options)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 ``(N, C, H, W)`` tensor, in [0, 1] units.

    Accumulated in float64 over chunks of ``chunk`` images, so it is exact enough and
    never holds a float copy of the whole dataset.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("channel_stats expects uint8 images of shape (N, C, H, W)")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += x.square().sum(dim=(0, 2, 3)).cpu()
    n = images.shape[0] * images.shape[2] * images.shape[3]
    if n == 0:
        raise ValueError("channel_stats of an empty set")
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def stats_for(name: str, data: ImageSet | None = None) -> tuple[Sequence[float], Sequence[float]]:
    """Registered stats of ``name``, or those computed from ``data`` when there are none."""
    key = canonical_name(name)
    if key in DATASET_STATS:
        return DATASET_STATS[key]
    if data is None:
        raise ValueError(f"no stored channel statistics for {name!r}; pass the data to compute")
    return channel_stats(data.images)
