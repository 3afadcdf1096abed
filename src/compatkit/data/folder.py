"""A folder of images, one sub-folder per class, in memory: ``root/<class_name>/*.png``.

The dataset named ``folder`` of the protocol (``compatkit run``). Class names are the
sub-folder names, sorted, and label ``k`` is the ``k``-th name. When ``root/train`` and
``root/test`` both exist they are the two splits and the class list is the sorted union of
both, so a class has the same label in either split even if one split lacks it. Listing is
:func:`compatkit.data.collection.list_folder`; reading is the streaming reader of
:mod:`compatkit.data.stream`, into one ``uint8`` tensor. Grayscale stays one channel when
every image is grayscale, anything else becomes RGB. An unreadable file stops the load
(``strict``, the default here: a training set with a hole is not the one the config names)
or is skipped.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import torch

from ..errors import DataError
from .collection import IMAGE_SUFFIXES, Collection, list_folder
from .imageset import ImageSet
from .missing import DatasetNotFoundError
from .preprocess import Preprocess
from .stream import ReadReport, probe_image, read_all

__all__ = ["IMAGE_SUFFIXES", "ImageFolderError", "folder_preprocess", "load_image_folder"]


class ImageFolderError(DataError):
    """An image folder that cannot be read as asked; the message names the folder or file."""


def _not_found(root: Path, detail: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        "image folder",
        f"{root}: {detail}",
        env="COMPATKIT_FOLDER",
        holding="one sub-folder of images per class (<class_name>/<image files>)",
    )


def folder_preprocess(
    coll: Collection,
    image_size: int | None,
    channels: int | None = None,
    strict: bool = True,
) -> Preprocess:
    """How to read ``coll`` into one tensor when no model says so.

    Channels: ``channels``, else 1 when every image is grayscale, else 3. Size: a square of
    ``image_size`` (shorter side resized, centre crop); without it every image must already
    have one size. Reads the headers only; an unreadable one is refused with ``strict``.
    """
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
        raise ImageFolderError(f"image_size must be a positive number of pixels, got {image_size}")
    need_modes = channels is None
    need_sizes = image_size is None
    gray, sizes, first = True, Counter(), {}
    if need_modes or need_sizes:
        for i in range(len(coll)):
            try:
                mode, size = probe_image(coll.path(i))
            except DataError as e:
                if strict:
                    raise ImageFolderError(str(e)) from None
                continue  # the reader will skip and count it
            gray &= mode in ("L", "1", "LA", "I;16")
            sizes[size] += 1
            first.setdefault(size, coll.path(i))
            if not need_sizes and not gray:
                break
    c = channels or (1 if gray else 3)
    stats = ([0.0] * c, [1.0] * c)
    if image_size is not None:
        return Preprocess.square(c, int(image_size), *stats)
    if not sizes:
        raise ImageFolderError(f"{coll.spec}: none of its {len(coll)} images can be read")
    if len(sizes) > 1:
        (cw, ch), _ = sizes.most_common(1)[0]
        odd = next(s for s in sizes if s != (cw, ch))
        raise ImageFolderError(
            f"images under {coll.spec} have {len(sizes)} different sizes (e.g. {first[odd]} is "
            f"{odd[0]}x{odd[1]} while most are {cw}x{ch}); pass --image-size N (image_size=N) to "
            "resize and centre-crop them all to N x N"
        )
    (w, h), _ = sizes.most_common(1)[0]
    return Preprocess.from_dict({"input_size": [c, h, w], "mean": stats[0], "std": stats[1]})


def collection_imageset(
    coll: Collection,
    pre: Preprocess,
    workers: int = 0,
    strict: bool = True,
    report: ReadReport | None = None,
) -> tuple[ImageSet, list[int]]:
    """``(ImageSet, positions read)`` of a labelled collection, decoded by ``pre``."""
    try:
        images, kept = read_all(coll, pre, workers, strict, report)
    except DataError as e:
        raise ImageFolderError(str(e)) from None
    labels = torch.from_numpy(coll.labels[kept].astype("int64"))
    return ImageSet(images, labels, list(coll.classes)), kept.tolist()


def load_image_folder(
    root: Path,
    split: str = "train",
    image_size: int | None = None,
    workers: int = 0,
    strict: bool = True,
    follow_links: bool = False,
) -> ImageSet:
    """Load ``split`` of an image folder (see the module docstring for the layout).

    ``image_size`` (pixels): resize + centre-crop every image to a square of that side.
    Without it all images must already share one size, otherwise a ValueError says so.
    """
    if importlib.util.find_spec("PIL") is None:  # pragma: no cover - Pillow ships with matplotlib
        raise DataError("loading an image folder needs Pillow: pip install pillow")
    root = Path(root)
    if not root.is_dir():
        raise _not_found(root, "no such folder")
    try:
        coll = list_folder(root, split, follow_links)
    except DataError as e:
        raise _not_found(root, str(e)) from None
    if not coll.labelled:
        raise _not_found(root, "no class sub-folders")
    pre = folder_preprocess(coll, image_size, None, strict)
    return collection_imageset(coll, pre, workers, strict)[0]
