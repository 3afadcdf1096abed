"""A checkpoint as an embedding function: images in, unit feature vectors out.

A gallery vector is only meaningful together with the model that made it, so
the embedder exposes what identifies that model (``fingerprint``: the
checkpoint's stored SHA-256 over its weights and contract) and what makes its
features reproducible: the input normalisation and image size stored in the
checkpoint's metadata (``extra["normalize"]``, ``extra["input_size"]``), so a
query embedded next year is normalised exactly as the gallery was. Images of
the wrong channel count or size are refused rather than silently resized: a
resize changes the features.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import load_checkpoint
from ..data import ImageSet, Normalize
from ..errors import CheckpointError, DataError
from ..model import CompatModel
from ..protocol.evaluate import extract_features
from ..runtime.device import Precision, Runtime

__all__ = ["Embedder", "load_embedder", "resolve_device"]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto``/None: CUDA when available, else the CPU; otherwise the named device."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise DataError(f"device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {name!r} asked for, but CUDA is not available")
    return dev


def _stats(meta: Mapping, path: str) -> tuple[list[float], list[float]]:
    norm = meta.get("extra", {}).get("normalize")
    channels = int(meta["contract"]["in_channels"])
    try:
        mean = [float(v) for v in norm["mean"]]
        std = [float(v) for v in norm["std"]]
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(
            f"checkpoint {path}: no input normalisation in its metadata (extra.normalize "
            "{mean, std}); write checkpoints with `compatkit train` or `compatkit run`"
        ) from None
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise CheckpointError(
            f"checkpoint {path}: extra.normalize has mean {mean} and std {std} for "
            f"{channels} input channel(s)"
        )
    return mean, std


@dataclass
class Embedder:
    """A loaded model with everything needed to embed images as its gallery expects."""

    model: CompatModel
    meta: dict
    """The checkpoint's verified metadata (:func:`compatkit.checkpoint.read_contract`)."""
    mean: list[float]
    std: list[float]
    input_size: tuple[int, int | None, int | None]
    """``(C, H, W)``; H and W are None when the checkpoint does not record them."""
    path: str = ""
    _device: torch.device = field(default_factory=lambda: torch.device("cpu"), repr=False)
    _normalize: Normalize = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._normalize = Normalize(self.mean, self.std)

    @property
    def fingerprint(self) -> str:
        """The checkpoint's stored content digest: identifies the model that made a vector."""
        return str(self.meta["sha256"])

    @property
    def contract(self) -> dict:
        return self.meta["contract"]

    @property
    def feat_dim(self) -> int:
        return int(self.contract["feat_dim"])

    @property
    def class_names(self) -> dict[int, str]:
        """Label in this model -> class name (empty for checkpoints without names)."""
        names = self.contract.get("class_map", {}).get("names") or self.meta.get("extra", {}).get(
            "class_names", {}
        )
        return {int(k): str(v) for k, v in names.items()}

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """Refuse images this model was not trained on: wrong dtype, channels or size."""
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = getattr(images, "dtype", type(images).__name__)
            shape = tuple(getattr(images, "shape", ()))
            raise DataError(f"{what}: expected uint8 images (N, C, H, W), got {got} {shape}")
        c, h, w = self.input_size
        _, ic, ih, iw = images.shape
        if ic != c:
            raise DataError(
                f"{what} have {ic} channel(s) but model {self.path or self.fingerprint[:12]} "
                f"takes {c}"
            )
        if h is not None and (ih, iw) != (h, w):
            raise DataError(
                f"{what} are {ih}x{iw} pixels but model {self.path or self.fingerprint[:12]} "
                f"was trained on {h}x{w}; load them with image_size={h}"
            )

    @torch.no_grad()
    def embed(
        self,
        images: ImageSet | torch.Tensor,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """``(N, d)`` float32 unit-length features on the CPU, in the order of ``images``.

        ``device``: where to run the model (``auto``/None: CUDA when available). Always
        fp32, so that the same images give the same vectors on every run.
        """
        if isinstance(images, ImageSet):
            data = images
        else:
            self.check_images(images)  # before ImageSet's own, less specific, checks
            data = ImageSet(images, torch.zeros(len(images), dtype=torch.int64), ["?"])
        self.check_images(data.images)
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        dev = resolve_device(device)
        if dev != self._device:
            self.model.to(dev)
            self._device = dev
        rt = Runtime(dev, Precision(None, False), self._normalize)
        f = extract_features(self.model, data, rt, batch_size)
        return F.normalize(f, dim=1).cpu()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the model's float input (on the images' device)."""
        return self._normalize(images)


def load_embedder(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> Embedder:
    """Load the checkpoint at ``path`` (``weights_only``, digest verified) as an Embedder."""
    model, meta = load_checkpoint(path, map_location="cpu")
    p = str(Path(path))
    mean, std = _stats(meta, p)
    c = int(meta["contract"]["in_channels"])
    size = meta.get("extra", {}).get("input_size")
    if isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) for v in size):
        if size[0] != c:
            raise CheckpointError(f"checkpoint {p}: input_size {size} disagrees with in_channels")
        input_size: tuple[int, int | None, int | None] = (c, size[1], size[2])
    else:
        input_size = (c, None, None)
    model.eval()
    emb = Embedder(model, meta, mean, std, input_size, p)
    dev = resolve_device(device)
    if dev.type != "cpu":
        model.to(dev)
        emb._device = dev
    return emb
