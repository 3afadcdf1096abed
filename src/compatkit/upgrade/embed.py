"""A model as an embedding function: images in, unit feature vectors out.

A gallery vector is only meaningful together with the model that made it, so an
:class:`Embedder` exposes what identifies that model (``fingerprint``), what a gallery must
agree with (``contract``, ``feat_dim``) and how an image file becomes its input
(``preprocess``: resize, crop, mean and std, recorded with the model), so a query embedded
next year goes through exactly the steps the gallery went through. Two kinds:

- :class:`CheckpointEmbedder`: a compatkit checkpoint (fingerprint: its stored SHA-256 over
  weights and contract; preprocessing from ``extra["preprocess"]``, or for older files from
  ``extra["normalize"]`` and ``extra["input_size"]``);
- :class:`ForeignEmbedder`: a TorchScript, ``.pt2`` or ONNX model with its JSON
  (:mod:`compatkit.interop.foreign`; fingerprint: the file's SHA-256). Its contract has
  ``head: "none"`` and no classes, so it is compatible with any model of its feature size
  and channels, which is exactly what the gate then measures.

Both embed in-memory uint8 images of the model's input size (:meth:`Embedder.embed`) and
stream a collection of any size (:meth:`Embedder.embed_items`). Always fp32, so the same
images give the same vectors on every run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import load_checkpoint
from ..data import ImageSet
from ..data.preprocess import Preprocess
from ..data.stream import ReadReport, iter_batches
from ..errors import CheckpointError, DataError, InputError
from ..runtime.device import resolve_device
from .data import Items, open_items

__all__ = [
    "CheckpointEmbedder",
    "Embedder",
    "ForeignEmbedder",
    "load_embedder",
]


class Embedder:
    """What every model gives the upgrade workflow; subclasses implement :meth:`features`."""

    path: str
    meta: dict
    preprocess: Preprocess | None
    """None only for old checkpoints that record no input size (images are taken as given)."""
    input_size: tuple[int, int | None, int | None]
    """``(C, H, W)``; H and W are None when the model does not record them."""

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    @property
    def contract(self) -> dict:
        return self.meta["contract"]

    @property
    def feat_dim(self) -> int:
        return int(self.contract["feat_dim"])

    @property
    def class_names(self) -> dict[int, str]:
        """Label in this model -> class name (empty when the model names none)."""
        names = self.contract.get("class_map", {}).get("names") or self.meta.get("extra", {}).get(
            "class_names", {}
        )
        return {int(k): str(v) for k, v in names.items()}

    @property
    def name(self) -> str:
        return self.path or self.fingerprint[:12]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the model's float input (on the images' device)."""
        return self._normalize(images)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised features ``(N, d)`` of a float input batch."""
        raise NotImplementedError

    def to(self, device: str | torch.device | None) -> Embedder:
        """Run the model on ``device`` (``auto``/None: CUDA when available)."""
        return self

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """Refuse images this model does not take: wrong dtype, channels or size."""
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = getattr(images, "dtype", type(images).__name__)
            shape = tuple(getattr(images, "shape", ()))
            raise DataError(f"{what}: expected uint8 images (N, C, H, W), got {got} {shape}")
        c, h, w = self.input_size
        _, ic, ih, iw = images.shape
        if ic != c:
            raise DataError(f"{what} have {ic} channel(s) but model {self.name} takes {c}")
        if h is not None and (ih, iw) != (h, w):
            raise DataError(
                f"{what} are {ih}x{iw} pixels but model {self.name} was trained on {h}x{w}; "
                f"load them with image_size={h}"
            )

    @torch.no_grad()
    def embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Unit features (float32, CPU) of one uint8 batch of the model's input size."""
        return F.normalize(self.features(self.normalize(images)).float(), dim=1).cpu()

    def embed(
        self,
        images: ImageSet | torch.Tensor,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """``(N, d)`` float32 unit-length features on the CPU, in the order of ``images``."""
        x = images.images if isinstance(images, ImageSet) else images
        self.check_images(x)
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        self.to(device)
        parts = [self.embed_batch(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.feat_dim)

    def embed_items(
        self,
        items: Items,
        batch_size: int = 64,
        workers: int = 0,
        strict: bool = False,
        device: str | torch.device | None = None,
        report: ReadReport | None = None,
        on_skip: Callable[[str], None] | None = None,
        positions: np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(positions, unit features)`` of ``items``, a batch at a time, in order.

        Files are decoded and resized by ``workers`` processes with the model's
        preprocessing; unreadable ones are skipped (counted in ``report``, passed to
        ``on_skip``) or, with ``strict``, stop the pass. Memory stays that of a few
        batches whatever the number of items.
        """
        self.to(device)
        if items.collection is None:
            data = items.images
            pos = np.arange(len(data)) if positions is None else np.asarray(positions)
            for s in range(0, len(pos), batch_size):
                p = pos[s : s + batch_size]
                x = self._fit(data.images[torch.from_numpy(p)])
                if report is not None:
                    report.read += len(p)
                yield p, self.embed_batch(x)
            return
        pre = self.preprocess
        if pre is None:
            raise DataError(
                f"model {self.name} records no input size, so images of any size cannot be "
                "resized for it; load them as an ImageSet of its size and call embed()"
            )
        for p, x in iter_batches(
            items.collection, pre, batch_size, workers, strict, positions, report, on_skip
        ):
            yield p.numpy(), self.embed_batch(x)

    def _fit(self, images: torch.Tensor) -> torch.Tensor:
        """In-memory images (a registered dataset) brought to the model's channels and size."""
        from .data import convert_channels

        c, h, w = self.input_size
        images = convert_channels(images, c)
        if h is not None and tuple(images.shape[2:]) != (h, w):
            if self.preprocess is None:
                raise DataError(f"images are {tuple(images.shape[2:])}, model takes {(h, w)}")
            images = self.preprocess.tensor(images)
        return images

    def load_items(
        self,
        spec: str,
        split: str | None = None,
        workers: int = 0,
        strict: bool = False,
        report: ReadReport | None = None,
    ) -> tuple[ImageSet, list[str]]:
        """``spec``'s images in memory as this model takes them, and one id per image.

        For callers that need the pixels (an index build of a registered dataset, a test);
        whoever only needs features should stream with :meth:`embed_items`.
        """
        from ..data.folder import collection_imageset

        items = open_items(spec, split)
        if items.collection is None:
            d = items.images
            return ImageSet(self._fit(d.images), d.labels, d.classes), list(items.ids or [])
        if self.preprocess is None:
            raise DataError(f"model {self.name} records no input size to resize {spec} to")
        data, kept = collection_imageset(items.collection, self.preprocess, workers, strict, report)
        return data, [items.collection.id(i) for i in kept]


class CheckpointEmbedder(Embedder):
    """A compatkit checkpoint (``weights_only``, digest verified)."""

    def __init__(self, model, meta: dict, pre: Preprocess | None, input_size, path: str) -> None:
        self.model, self.meta, self.preprocess, self.path = model, meta, pre, path
        self.input_size = input_size
        extra = meta.get("extra", {})
        norm = pre.normalizer() if pre is not None else None
        if norm is None:
            from ..data import Normalize

            norm = Normalize(extra["normalize"]["mean"], extra["normalize"]["std"])
        self.mean, self.std = list(norm.mean), list(norm.std)
        self._normalize = norm
        self._device = torch.device("cpu")

    @property
    def fingerprint(self) -> str:
        """The checkpoint's stored content digest: identifies the model that made a vector."""
        return str(self.meta["sha256"])

    def to(self, device: str | torch.device | None) -> Embedder:
        dev = resolve_device(device)
        if dev != self._device:
            self.model.to(dev)
            self._device = dev
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x.to(self._device))

    def embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        return super().embed_batch(images.to(self._device))


class ForeignEmbedder(Embedder):
    """A foreign model (:class:`compatkit.interop.foreign.ForeignModel`); runs on the CPU."""

    def __init__(self, fm) -> None:
        self.foreign = fm
        self.path = str(fm.path)
        self.preprocess = fm.preprocess
        self.input_size = fm.preprocess.input_size
        self._normalize = fm.preprocess.normalizer()
        self.mean, self.std = list(fm.preprocess.mean), list(fm.preprocess.std)
        c = fm.preprocess.channels
        contract = {
            "backbone": f"{fm.format}:{fm.name}",
            "in_channels": c,
            "feat_dim": fm.feat_dim,
            "head": "none",
            "num_classes": 0,
            "etf_seed": 0,
            "junction": False,
            "head_rows": 0,
            "class_map": {},
        }
        self.meta = {
            "format": fm.format,
            "contract": contract,
            "extra": {"preprocess": fm.preprocess.to_dict(), "foreign": fm.meta},
            "sha256": fm.sha256,
            "path": self.path,
        }

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the model file."""
        return self.foreign.sha256

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.foreign(x)


def checkpoint_preprocess(meta: Mapping, path: str) -> tuple[Preprocess | None, tuple]:
    """``(preprocess or None, (C, H, W))`` recorded in a checkpoint's metadata."""
    extra = meta.get("extra", {})
    c = int(meta["contract"]["in_channels"])
    if isinstance(extra.get("preprocess"), Mapping):
        try:
            pre = Preprocess.from_dict(extra["preprocess"])
        except InputError as e:
            raise CheckpointError(f"checkpoint {path}: extra.preprocess: {e}") from None
        if pre.channels != c:
            raise CheckpointError(f"checkpoint {path}: preprocess channels differ from the model's")
        return pre, pre.input_size
    norm = extra.get("normalize")
    try:
        mean = [float(v) for v in norm["mean"]]
        std = [float(v) for v in norm["std"]]
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(
            f"checkpoint {path}: no input normalisation in its metadata (extra.normalize "
            "{mean, std}); write checkpoints with `compatkit train` or `compatkit run`"
        ) from None
    if len(mean) != c or len(std) != c or min(std) <= 0:
        raise CheckpointError(
            f"checkpoint {path}: extra.normalize has mean {mean} and std {std} for "
            f"{c} input channel(s)"
        )
    size = extra.get("input_size")
    if isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) for v in size):
        if size[0] != c:
            raise CheckpointError(
                f"checkpoint {path}: input_size {size} disagrees with in_channels"
            )
        resize = size[1] if size[1] == size[2] else None
        d = {"input_size": size, "resize": resize, "mean": mean, "std": std}
        return Preprocess.from_dict(d), (c, size[1], size[2])
    return None, (c, None, None)


def load_embedder(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> Embedder:
    """The model at ``path``: a compatkit checkpoint, or a foreign model with its JSON."""
    from ..interop.foreign import foreign_format, load_foreign

    p = str(Path(path))
    fmt = foreign_format(path)
    if fmt is not None:
        return ForeignEmbedder(load_foreign(path, fmt))
    model, meta = load_checkpoint(path, map_location="cpu")
    pre, size = checkpoint_preprocess(meta, p)
    if pre is None and not isinstance(meta.get("extra", {}).get("normalize"), Mapping):
        raise CheckpointError(f"checkpoint {p}: no input normalisation in its metadata")
    model.eval()
    return CheckpointEmbedder(model, meta, pre, size, p).to(device)
