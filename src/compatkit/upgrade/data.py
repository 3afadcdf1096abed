"""A user's images for the upgrade workflow: an image folder or a registered dataset.

``DATA`` on the command line (``compatkit train DATA``, ``check --query Q
--gallery G``, ``index build MODEL DATA``) is one string:

- a folder path: one sub-folder per class, class *names* = folder names
  (``root/<class>/*.png``; with ``root/train`` and ``root/test`` both present,
  those are the splits and ``PATH:test`` picks one);
- a registered dataset, optionally with its split: ``fashion-mnist``,
  ``fashion-mnist:test``, ``cifar10:train`` (found where
  :func:`compatkit.data.dataset_root` looks).

Classes are identified by name everywhere in this workflow: the folder order
decides a label only inside one :class:`~compatkit.data.ImageSet`, so a class
added to a folder (which renumbers the folders after it) keeps its identity.
Every failure is a :class:`~compatkit.errors.DataError` whose one line names the
spec at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import ImageSet, load_dataset
from ..data.datasets import DATASETS, SPLITS
from ..data.folder import IMAGE_SUFFIXES, load_image_folder
from ..errors import DataError

__all__ = [
    "convert_channels",
    "item_ids",
    "load_user_data",
    "load_user_items",
    "parse_spec",
    "relabel",
    "resize_images",
]

# ITU-R BT.601 luma weights: the usual RGB -> grayscale conversion (Pillow's "L" mode).
_LUMA = (0.299, 0.587, 0.114)
_CHUNK = 4096  # images per resize step: bounds the float copy to a few hundred MB


def _registered(name: str) -> str | None:
    """The registry key of ``name`` (aliases allowed), or None; ``folder`` needs a path."""
    from ..data.datasets import canonical_name

    key = canonical_name(name)
    return key if key in DATASETS and key != "folder" else None


def parse_spec(spec: str, split: str | None = None) -> tuple[str, str, str]:
    """``(kind, where, split)``: kind ``"folder"`` (where = the path) or ``"dataset"`` (its name).

    A path that exists wins over a dataset of the same name. ``split`` given
    both in ``spec`` and as an argument must agree.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec {spec!r}: give an image-folder path or a dataset name")
    if split is not None and split not in SPLITS:
        raise DataError(f"data {spec}: unknown split {split!r}; choose one of {list(SPLITS)}")
    where, own = spec, None
    if not Path(spec).exists() and ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if tail in SPLITS:
            where, own = head, tail
        elif _registered(head) or Path(head).is_dir():
            raise DataError(f"data {spec}: unknown split {tail!r}; choose one of {list(SPLITS)}")
    if own is not None and split is not None and own != split:
        raise DataError(f"data {spec}: names split {own!r} but split {split!r} was asked for")
    chosen = own or split or "train"
    p = Path(where).expanduser()
    if p.exists():
        if not p.is_dir():
            raise DataError(
                f"data {spec}: {p} is a file; give a folder with one sub-folder per class"
            )
        return "folder", str(p), chosen
    key = _registered(where)
    if key is None:
        names = sorted(k for k in DATASETS if k != "folder")
        raise DataError(
            f"data {spec}: no such folder, and not a registered dataset (one of {names})"
        )
    return "dataset", key, chosen


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` pixels (bilinear, antialiased), then the central square.

    The tensor counterpart of the image-folder loader's resize, so that a
    registered dataset and an exported folder of it give the same input size.
    """
    if size < 1:
        raise DataError(f"image size must be a positive number of pixels, got {size}")
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty(n, c, size, size, dtype=torch.uint8, device=images.device)
    for s in range(0, n, _CHUNK):
        x = images[s : s + _CHUNK].float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        out[s : s + _CHUNK] = x[:, :, top : top + size, left : left + size].round().clamp(0, 255)
    return out


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grayscale -> RGB (replicated) or RGB -> grayscale (BT.601 luma); same count: unchanged."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        w = torch.tensor(_LUMA, device=images.device).view(1, 3, 1, 1)
        return (images.float() * w).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DataError(f"cannot convert images of {have} channels to {channels}")


def item_ids(root: str | Path, split: str = "train") -> list[str]:
    """Stable ids of an image folder's items, in the loader's order: paths relative to ``root``.

    The image-folder loader reads class folders in sorted order and, inside each,
    the image files in sorted order; the ids follow the same rule, so id ``i``
    names the file of image ``i``.
    """
    root = Path(root)

    def visible_dirs(folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    if (root / "train").is_dir() and (root / "test").is_dir():
        names = sorted({d.name for s in SPLITS for d in visible_dirs(root / s)})
        folder = root / split
    else:
        names = [d.name for d in visible_dirs(root)]
        folder = root
    ids = []
    for name in names:
        cls = folder / name
        files = (
            sorted(
                p
                for p in cls.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            if cls.is_dir()
            else []
        )
        ids += [p.relative_to(root).as_posix() for p in files]
    return ids


def load_user_items(
    spec: str,
    split: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> tuple[ImageSet, list[str]]:
    """Images of ``spec`` (see the module docstring) and one stable id per image.

    Ids are file paths relative to the folder for an image folder, and
    ``"<split>/<index>"`` for a registered dataset. ``image_size``: resize and
    centre-crop to a square of that side (pixels); ``channels``: convert to 1
    (grayscale) or 3 (RGB) channels. The result lives on the CPU.
    """
    kind, where, chosen = parse_spec(spec, split)
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
        raise DataError(f"data {spec}: image size must be a positive integer, got {image_size!r}")
    try:
        if kind == "folder":
            data = load_image_folder(Path(where), chosen, image_size=image_size)
            ids = item_ids(where, chosen)
        else:
            data = load_dataset(where, chosen)
            if image_size is not None:
                data = ImageSet(
                    resize_images(data.images, int(image_size)), data.labels, data.classes
                )
            ids = [f"{chosen}/{i}" for i in range(len(data))]
    except (FileNotFoundError, ValueError, OSError) as e:  # DataError is a ValueError too
        msg = " ".join(str(e).split())
        raise DataError(f"data {spec}: {msg}") from None
    if len(ids) != len(data):  # the folder changed while it was read
        raise DataError(f"data {spec}: {len(data)} images were read but {len(ids)} files listed")
    if len(data) == 0:
        raise DataError(f"data {spec}: no images")
    if len(set(data.classes)) != len(data.classes):
        raise DataError(f"data {spec}: class names are not unique: {data.classes}")
    if channels is not None and channels != data.channels:
        data = ImageSet(convert_channels(data.images, channels), data.labels, data.classes)
    return data, ids


def load_user_data(
    spec: str,
    split: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> ImageSet:
    """Images of ``spec`` as an ImageSet on the CPU (``classes`` = class names); see
    :func:`load_user_items` for the arguments."""
    return load_user_items(spec, split, image_size, channels)[0]


def relabel(data: ImageSet, names: Sequence[str]) -> ImageSet:
    """The same images with labels into ``names`` (each of ``data``'s classes must be there).

    This is how data meets a model: the model's label ``k`` is the class
    ``names[k]`` whatever position the folder order gave that class.
    """
    index = {n: i for i, n in enumerate(names)}
    present = [data.classes[k] for k in data.present_classes()]
    missing = [c for c in present if c not in index]
    if missing:
        raise DataError(f"classes {missing} are not among {list(names)}")
    # A class without images here (a folder split that lacks it) is never looked up.
    lut = torch.tensor([index.get(c, -1) for c in data.classes], dtype=torch.int64)
    return ImageSet(data.images, lut.to(data.device)[data.labels], list(names))
