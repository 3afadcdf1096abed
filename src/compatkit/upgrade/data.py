"""A user's images for the upgrade workflow: an image folder or a registered dataset.

``DATA`` on the command line (``compatkit train DATA``, ``check --query Q
--gallery G``, ``index build MODEL DATA``) is one string:

- a folder path: one sub-folder per class, class *names* = folder names
  (``root/<class>/*.png``; with ``root/train`` and ``root/test`` both present,
  those are the splits and ``PATH:test`` picks one), or a flat folder of images
  (an unlabelled gallery);
- a list file, ``.csv`` (``path[,label]``) or ``.jsonl`` (``{"path", "label"}``);
- a registered dataset, optionally with its split: ``fashion-mnist``,
  ``fashion-mnist:test``, ``cifar10:train`` (found where
  :func:`compatkit.data.dataset_root` looks).

Folders and lists are *listed* here (:func:`open_items`) and read lazily by whoever embeds
them, at the model's own preprocessing; a registered dataset is already in memory.
Classes are identified by name everywhere in this workflow: the folder order
decides a label only inside one :class:`~compatkit.data.ImageSet`, so a class
added to a folder (which renumbers the folders after it) keeps its identity.
Every failure is a :class:`~compatkit.errors.DataError` whose one line names the
spec at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import ImageSet, load_dataset
from ..data.collection import LIST_SUFFIXES, Collection, list_file, list_folder
from ..data.datasets import DATASETS, SPLITS
from ..data.folder import collection_imageset, folder_preprocess
from ..data.preprocess import Preprocess
from ..data.sources import BatchSource
from ..data.stream import ReadReport
from ..errors import DataError

__all__ = [
    "Items",
    "convert_channels",
    "given_preprocess",
    "item_ids",
    "labelled_collection",
    "load_items",
    "load_user_data",
    "load_user_items",
    "open_items",
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
        if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            return "list", str(p), chosen
        if not p.is_dir():
            raise DataError(
                f"data {spec}: {p} is a file; give a folder (one sub-folder per class, or a "
                f"flat folder of images) or a list file ({', '.join(LIST_SUFFIXES)})"
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
    """Stable ids of an image folder's items, in the listing's order: paths relative to
    ``root`` (class folders sorted, files sorted inside each)."""
    return list_folder(Path(root), split).ids()


@dataclass
class Items:
    """The items of a data spec: files listed but not read (``collection``), or a registered
    dataset already in memory (``images`` and ``ids``)."""

    spec: str
    collection: Collection | None = None
    images: ImageSet | None = None
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.collection) if self.collection is not None else len(self.images)

    @property
    def classes(self) -> list[str]:
        return self.collection.classes if self.collection is not None else self.images.classes

    @property
    def labels(self) -> np.ndarray:
        """Per item an index into ``classes``, -1 where unlabelled."""
        if self.collection is not None:
            return self.collection.labels
        return self.images.labels.numpy().astype(np.int32)

    @property
    def labelled(self) -> bool:
        return self.collection.labelled if self.collection is not None else True

    def id(self, i: int) -> str:
        return self.collection.id(i) if self.collection is not None else self.ids[i]

    def left_out(self) -> str:
        """What listing skipped, as one line (empty when nothing)."""
        return self.collection.left_out.summary() if self.collection is not None else ""


def open_items(spec: str, split: str | None = None, follow_links: bool = False) -> Items:
    """The items of ``spec`` (see the module docstring) without reading any image file."""
    kind, where, chosen = parse_spec(spec, split)
    try:
        if kind == "folder":
            coll = list_folder(Path(where), chosen, follow_links)
        elif kind == "list":
            coll = list_file(where)
        else:
            data = load_dataset(where, chosen)
            return Items(spec, images=data, ids=[f"{chosen}/{i}" for i in range(len(data))])
    except (FileNotFoundError, ValueError, OSError) as e:  # DataError is a ValueError too
        msg = " ".join(str(e).split())
        raise DataError(f"data {spec}: {msg}") from None
    coll.spec = spec
    if len(set(coll.classes)) != len(coll.classes):
        raise DataError(f"data {spec}: class names are not unique: {coll.classes}")
    return Items(spec, collection=coll)


def labelled_collection(items: Items, labels: bool = True) -> Collection:
    """``items``' collection, refused when it has no classes and ``labels`` asks for them;
    without ``labels`` unlabelled items become one class named ``unlabelled``."""
    coll = items.collection
    if not coll.labelled:
        if labels:
            raise DataError(
                f"data {items.spec}: unlabelled (no class sub-folders or labels); this needs "
                "classes"
            )
        coll.labels[:] = 0
        coll.classes = ["unlabelled"]
    return coll


def load_items(
    items: Items,
    image_size: int | None = None,
    channels: int | None = None,
    workers: int = 0,
    strict: bool = True,
    preprocess: Preprocess | None = None,
    note: Callable[[str], None] | None = None,
    labels: bool = True,
    report: ReadReport | None = None,
) -> tuple[ImageSet, list[str]]:
    """:func:`load_user_items` of items already opened (:func:`open_items`); ``report``
    counts the files read and skipped."""
    spec = items.spec
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
        raise DataError(f"data {spec}: image size must be a positive integer, got {image_size!r}")
    try:
        if items.collection is not None:
            coll = labelled_collection(items, labels)
            pre = preprocess or folder_preprocess(coll, image_size, channels, strict)
            rep = report if report is not None else ReadReport()
            data, kept = collection_imageset(coll, pre, workers, strict, rep)
            if note is not None and rep.skipped:
                note(f"{spec}: {rep.skipped} unreadable file(s) skipped: " + "; ".join(rep.errors))
            ids = [coll.id(i) for i in kept]
        else:
            data, ids = items.images, list(items.ids)
            if preprocess is not None:
                x = convert_channels(data.images, preprocess.channels)
                data = ImageSet(preprocess.tensor(x), data.labels, data.classes)
            elif image_size is not None:
                data = ImageSet(
                    resize_images(data.images, int(image_size)), data.labels, data.classes
                )
    except (FileNotFoundError, ValueError, OSError) as e:  # DataError is a ValueError too
        msg = " ".join(str(e).split())
        raise DataError(msg if msg.startswith(f"data {spec}:") else f"data {spec}: {msg}") from None
    if len(ids) != len(data):  # the folder changed while it was read
        raise DataError(f"data {spec}: {len(data)} images were read but {len(ids)} files listed")
    if len(data) == 0:
        raise DataError(f"data {spec}: no images")
    if len(set(data.classes)) != len(data.classes):
        raise DataError(f"data {spec}: class names are not unique: {data.classes}")
    if channels is not None and channels != data.channels:
        data = ImageSet(convert_channels(data.images, channels), data.labels, data.classes)
    return data, ids


def load_user_items(
    spec: str,
    split: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    workers: int = 0,
    strict: bool = True,
    preprocess: Preprocess | None = None,
    note: Callable[[str], None] | None = None,
    labels: bool = True,
) -> tuple[ImageSet, list[str]]:
    """Images of ``spec`` (see the module docstring) and one stable id per image.

    Ids are file paths relative to the folder for an image folder, and
    ``"<split>/<index>"`` for a registered dataset. ``image_size``: resize and
    centre-crop to a square of that side (pixels); ``channels``: convert to 1
    (grayscale) or 3 (RGB) channels; ``preprocess``: a model's own steps instead (both
    others must then be None). Files are decoded by ``workers`` processes; an unreadable one
    is refused (``strict``, the default) or skipped; ``note`` receives one line for what
    listing left out and one per skipped file. ``labels=False`` also takes unlabelled images
    (one class named ``unlabelled``). The result lives on the CPU.
    """
    items = open_items(spec, split)
    if note is not None and items.left_out():
        note(f"{spec}: {items.left_out()}")
    return load_items(items, image_size, channels, workers, strict, preprocess, note, labels)


def load_user_data(
    spec: str,
    split: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    workers: int = 0,
    strict: bool = True,
    preprocess: Preprocess | None = None,
    note: Callable[[str], None] | None = None,
) -> ImageSet:
    """Images of ``spec`` as an ImageSet on the CPU (``classes`` = class names); see
    :func:`load_user_items` for the arguments."""
    if preprocess is not None:
        image_size = channels = None
    return load_user_items(spec, split, image_size, channels, workers, strict, preprocess, note)[0]


def given_preprocess(
    opts, old_extra: dict, foreign, backbone: str, channels: int | None
) -> Preprocess | None:
    """How training data must be read when something fixes it: a foreign old model's
    preprocessing, the old checkpoint's recorded one, or a pretrained ``timm:``/``tv:``
    backbone's; None: the data's own size (or ``image_size``) and statistics decide."""
    from ..backbones import backbone_preprocess

    if foreign is not None:
        if opts.image_size is not None and opts.image_size != foreign.preprocess.crop[0]:
            raise DataError(
                f"--image-size {opts.image_size}: the foreign old model takes "
                f"{foreign.preprocess.crop[0]} px, and its successor takes the same input"
            )
        return foreign.preprocess
    if isinstance(old_extra.get("preprocess"), dict) and opts.image_size is None:
        return Preprocess.from_dict(old_extra["preprocess"])
    if not old_extra and (opts.pretrained or opts.weights) and ":" in backbone:
        pre = backbone_preprocess(backbone, channels or 3)
        if pre is not None and opts.image_size:
            size = int(opts.image_size)
            d = pre.to_dict() | {"input_size": [pre.channels, size, size], "resize": size}
            pre = Preprocess.from_dict({k: v for k, v in d.items() if k != "crop"})
        return pre
    return None


def relabel(data: ImageSet | BatchSource, names: Sequence[str]) -> ImageSet | BatchSource:
    """The same images with labels into ``names`` (each of ``data``'s classes must be there);
    an :class:`ImageSet` stays one, a batch source (images read from files) stays one.

    This is how data meets a model: the model's label ``k`` is the class
    ``names[k]`` whatever position the folder order gave that class.
    """
    index = {n: i for i, n in enumerate(names)}
    present = [data.classes[k] for k in torch.unique(data.labels).tolist()]
    missing = [c for c in present if c not in index]
    if missing:
        raise DataError(f"classes {missing} are not among {list(names)}")
    # A class without images here (a folder split that lacks it) is never looked up.
    lut = torch.tensor([index.get(c, -1) for c in data.classes], dtype=torch.int64)
    if isinstance(data, ImageSet):
        return ImageSet(data.images, lut.to(data.device)[data.labels], list(names))
    return data.map_labels(lut, list(names))
