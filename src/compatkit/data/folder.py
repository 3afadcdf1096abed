"""A folder of images, one sub-folder per class: ``root/<class_name>/*.png``.

This is how most people hold their own data. Class names are the sub-folder
names, sorted, and label ``k`` is the ``k``-th name. When ``root/train`` and
``root/test`` both exist they are the two splits and the class list is the
sorted union of both, so a class has the same label in either split even if
one split lacks it. Images are decoded once with Pillow into one ``uint8``
tensor; grayscale stays one channel when every image is grayscale, anything
else becomes RGB.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .imageset import ImageSet

__all__ = ["IMAGE_SUFFIXES", "load_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _resize_center_crop(img, size: int):  # PIL.Image -> PIL.Image
    """Shorter side to ``size`` pixels (bilinear), then the central ``size x size`` square:
    the usual evaluation transform, which keeps the aspect ratio and drops the border."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image_folder(root: Path, split: str = "train", image_size: int | None = None) -> ImageSet:
    """Load ``split`` of an image folder (see the module docstring for the layout).

    ``image_size`` (pixels): resize + centre-crop every image to a square of that side.
    Without it all images must already share one size, otherwise a ValueError says so.
    """
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow ships with matplotlib
        raise ImportError("loading an image folder needs Pillow: pip install pillow") from e

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    if has_splits:
        classes = sorted({d.name for s in ("train", "test") for d in _class_dirs(root / s)})
        folder = root / split
    elif split == "train":
        classes = [d.name for d in _class_dirs(root)]
        folder = root
    else:
        raise FileNotFoundError(
            f"image folder {root} has no train/ and test/ sub-folders, so it only has a "
            f"'train' split (asked for {split!r})"
        )
    if not classes:
        raise FileNotFoundError(f"image folder {folder} has no class sub-folders")

    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        files = _image_files(class_dir) if class_dir.is_dir() else []
        if not files and not has_splits:
            raise FileNotFoundError(f"class folder {class_dir} holds no images ({IMAGE_SUFFIXES})")
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(f"no images under {folder}")

    pil = []
    for p in paths:
        with Image.open(p) as im:
            im.load()
            pil.append(im)
    gray = all(im.mode in ("L", "1") for im in pil)
    mode = "L" if gray else "RGB"
    pil = [im.convert(mode) for im in pil]
    if image_size is not None:
        if image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        pil = [_resize_center_crop(im, image_size) for im in pil]
    sizes = Counter(im.size for im in pil)
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        odd, im = next((p, im) for p, im in zip(paths, pil, strict=True) if im.size != common)
        raise ValueError(
            f"images under {folder} have {len(sizes)} different sizes (e.g. {odd} is "
            f"{im.size[0]}x{im.size[1]} while most are {common[0]}x{common[1]}); pass "
            "image_size=N to resize and centre-crop them all to N x N"
        )
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in pil])
    arr = arr[:, None] if gray else arr.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return ImageSet(
        torch.from_numpy(np.ascontiguousarray(arr)),
        torch.tensor(labels, dtype=torch.int64),
        classes,
    )
