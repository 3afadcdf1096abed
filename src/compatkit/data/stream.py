"""Reading a :class:`~compatkit.data.collection.Collection` lazily, in batches.

A ``torch.utils.data.DataLoader`` with ``workers`` processes decodes each file with Pillow
and applies the model's :class:`~compatkit.data.preprocess.Preprocess` (resize, crop) where
it was decoded, so only uint8 batches of the model's input size cross between processes
and the main process holds a few batches at a time whatever the collection's size. A file
that cannot be read is reported by path and skipped (counted in :class:`ReadReport`), or,
with ``strict``, stops the reading with a :class:`~compatkit.errors.DataError` naming it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .collection import Collection
from .preprocess import Preprocess

__all__ = ["ReadReport", "batch_loader", "decode_image", "iter_batches", "probe_image", "read_all"]

_SHOWN = 20  # unreadable files named in the report (all are counted)


@contextlib.contextmanager
def _image_errors(path: str | Path) -> Iterator[None]:
    """Any failure to open or decode ``path`` as one DataError naming the file.

    Pillow warns (``DecompressionBombWarning``) above ``Image.MAX_IMAGE_PIXELS`` and raises
    above twice that; both are refused, since an image of more than 89 million pixels is a
    decompression bomb, not a photo to embed.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused, a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # UnidentifiedImageError (an OSError): empty or non-image file; OSError "image file is
        # truncated"; SyntaxError/ValueError: malformed chunks in some Pillow plug-ins.
        cause = " ".join(str(e).split())[:160] or type(e).__name__
        raise DataError(f"{path}: not a readable image ({cause})") from None


def decode_image(path: str | Path):  # -> PIL.Image.Image
    """Open and fully decode one image (see :func:`_image_errors` for what is refused)."""
    from PIL import Image

    with _image_errors(path), Image.open(path) as im:
        im.load()
        return im


def probe_image(path: str | Path) -> tuple[str, tuple[int, int]]:
    """``(mode, (width, height))`` from the file's header, without decoding the pixels."""
    from PIL import Image

    with _image_errors(path), Image.open(path) as im:
        return im.mode, im.size


@dataclass
class ReadReport:
    """What a pass over a collection read: images delivered and files skipped."""

    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    """The first ``_SHOWN`` unreadable files, one line each (path and cause)."""

    def note(self, message: str) -> None:
        self.skipped += 1
        if len(self.errors) < _SHOWN:
            self.errors.append(message)

    def to_dict(self) -> dict:
        return {"read": self.read, "skipped": self.skipped, "errors": self.errors}


class _Reader(Dataset):
    """Item ``k``: ``(position, uint8 (C, H, W) or None, error message or None)``."""

    def __init__(self, coll: Collection, pre: Preprocess, positions: np.ndarray) -> None:
        self.coll, self.pre, self.positions = coll, pre, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor | None, str | None]:
        i = int(self.positions[k])
        try:
            return i, self.pre.image(decode_image(self.coll.path(i))), None
        except DataError as e:
            return i, None, str(e)


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    pos = torch.tensor([i for i, _ in good], dtype=torch.int64)
    return pos, (torch.stack([x for _, x in good]) if good else None), bad


def batch_loader(
    coll: Collection,
    pre: Preprocess,
    positions: np.ndarray,
    batch_size: int = 64,
    workers: int = 0,
    plan: Sequence[Sequence[int]] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """The DataLoader under :func:`iter_batches`: one ``(positions read, uint8 images (B, C, H,
    W) or None when none could be read, [(position, error)])`` per batch, every batch
    delivered even when all its files failed.

    ``positions``: the collection's items this loader reads; ``plan``: the batches as lists
    of indices into ``positions`` (a sampler's epoch), default ``positions`` in order in
    batches of ``batch_size``. ``pin_memory``: page-locked batches, for a copy to a GPU that
    overlaps the next batch's reading.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if workers < 0:
        raise DataError(f"--workers must be >= 0, got {workers}")
    batching = {"batch_size": batch_size} if plan is None else {"batch_sampler": plan}
    return DataLoader(
        _Reader(coll, pre, np.asarray(positions, dtype=np.int64)),
        **batching,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
    )


def iter_batches(
    coll: Collection,
    pre: Preprocess,
    batch_size: int = 64,
    workers: int = 0,
    strict: bool = False,
    positions: np.ndarray | None = None,
    report: ReadReport | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(positions, uint8 images (B, C, H, W))`` of the collection's items, in order.

    ``positions``: the items to read (default all). Unreadable files are skipped, counted
    in ``report`` and passed to ``on_skip``; with ``strict`` the first one raises.
    """
    pos = np.arange(len(coll)) if positions is None else np.asarray(positions, dtype=np.int64)
    rep = report if report is not None else ReadReport()
    for p, images, bad in batch_loader(coll, pre, pos, batch_size, workers):
        for _, msg in bad:
            if strict:
                raise DataError(msg)
            rep.note(msg)
            if on_skip is not None:
                on_skip(msg)
        if images is not None:
            rep.read += len(p)
            yield p, images


def read_all(
    coll: Collection,
    pre: Preprocess,
    workers: int = 0,
    strict: bool = False,
    report: ReadReport | None = None,
    on_skip: Callable[[str], None] | None = None,
    batch_size: int = 64,
) -> tuple[torch.Tensor, np.ndarray]:
    """Every readable item in memory: ``(uint8 (N, C, H, W), positions read)``.

    The tensor is allocated once at the full size (N x C x H x W bytes) and trimmed when
    files were skipped, so the peak is the decoded set plus a few batches.
    """
    c, h, w = pre.input_size
    out = torch.empty(len(coll), c, h, w, dtype=torch.uint8)
    kept = np.empty(len(coll), dtype=np.int64)
    n = 0
    for p, images in iter_batches(coll, pre, batch_size, workers, strict, None, report, on_skip):
        out[n : n + len(p)] = images
        kept[n : n + len(p)] = p.numpy()
        n += len(p)
    if n == 0:
        raise DataError(f"{coll.spec}: none of its {len(coll)} images could be read")
    return (out if n == len(coll) else out[:n].clone()), kept[:n]
