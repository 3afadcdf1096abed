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

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .imageset import ImageSet
from .missing import DatasetNotFoundError

__all__ = ["IMAGE_SUFFIXES", "ImageFolderError", "load_image_folder"]


class ImageFolderError(DataError):
    """An image folder that cannot be read as asked; the message names the folder or file."""


def _not_found(root: Path, detail: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        "image folder",
        f"{root}: {detail}",
        env="COMPATKIT_FOLDER",
        holding="one sub-folder of images per class (<class_name>/<image files>)",
    )


def _decode(path: Path):  # -> PIL.Image.Image
    """Open and fully decode one image; any failure is one DataError naming the file.

    Pillow warns (``DecompressionBombWarning``) above ``Image.MAX_IMAGE_PIXELS`` and raises
    above twice that; both are refused here, since a dataset image of more than 89 million
    pixels is a decompression bomb, not a training image.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageFolderError(f"{path}: refused, a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # UnidentifiedImageError (an OSError): empty or non-image file; OSError "image file is
        # truncated"; SyntaxError/ValueError: malformed chunks in some Pillow plug-ins.
        cause = " ".join(str(e).split())[:160] or type(e).__name__
        raise ImageFolderError(f"{path}: not a readable image ({cause})") from None


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
    import importlib.util

    if importlib.util.find_spec("PIL") is None:  # pragma: no cover - Pillow ships with matplotlib
        raise DataError("loading an image folder needs Pillow: pip install pillow")

    root = Path(root)
    if not root.is_dir():
        raise _not_found(root, "no such folder")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    if has_splits:
        classes = sorted({d.name for s in ("train", "test") for d in _class_dirs(root / s)})
        folder = root / split
    elif split == "train":
        classes = [d.name for d in _class_dirs(root)]
        folder = root
    else:
        raise _not_found(
            root,
            f"no train/ and test/ sub-folders, so it only has a 'train' split "
            f"(asked for {split!r})",
        )
    if not classes:
        raise _not_found(folder, "no class sub-folders")

    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        files = _image_files(class_dir) if class_dir.is_dir() else []
        if not files and not has_splits:
            raise _not_found(class_dir, f"the class folder holds no images ({IMAGE_SUFFIXES})")
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise _not_found(folder, "no images")

    pil = [_decode(p) for p in paths]
    gray = all(im.mode in ("L", "1") for im in pil)
    mode = "L" if gray else "RGB"
    pil = [im.convert(mode) for im in pil]
    if image_size is not None:
        if image_size < 1:
            raise ImageFolderError(
                f"image_size must be a positive number of pixels, got {image_size}"
            )
        pil = [_resize_center_crop(im, image_size) for im in pil]
    sizes = Counter(im.size for im in pil)
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        odd, im = next((p, im) for p, im in zip(paths, pil, strict=True) if im.size != common)
        raise ImageFolderError(
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
