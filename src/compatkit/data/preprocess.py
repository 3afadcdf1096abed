"""A model's input preprocessing: how an image file of any size becomes the tensor it takes.

Features are only comparable when every image went through the same steps, so the steps
are data that travel with the model (a checkpoint's ``extra["preprocess"]``, a foreign
model's JSON file) rather than code at the call site. The steps are those of an ImageNet
evaluation transform (torchvision's ``Resize`` + ``CenterCrop``, timm's eval transform):

1. decode, convert to RGB (3 channels) or grayscale (1 channel);
2. ``resize``: scale the shorter side to this many pixels, keeping the aspect ratio (the
   longer side is truncated to an integer, as torchvision does); None: no resize;
3. ``crop``: the central ``H x W`` window (offsets rounded as torchvision rounds them),
   zero-padded where the image is smaller;
4. scale to float with :class:`compatkit.data.Normalize` (``(x / 255 - mean) / std``).

Steps 1-3 run where images are decoded (worker processes) and give uint8, which is 4 times
smaller than float to move between processes; step 4 runs on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .augment import Normalize

__all__ = ["INTERPOLATIONS", "Preprocess"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
"""Pillow's resampling filters; torchvision and timm name theirs the same way."""
_TENSOR_MODES = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}


def _pil_filter(name: str) -> int:
    from PIL import Image

    return getattr(Image.Resampling, name.upper())


def _int(v: Any, what: str, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise InputError(f"{what} must be an integer >= {low}, got {v!r}")
    return v


def _floats(v: Any, n: int, what: str, positive: bool = False) -> tuple[float, ...]:
    if not isinstance(v, Sequence) or isinstance(v, str) or len(v) != n:
        raise InputError(f"{what} must be a list of {n} numbers (one per channel), got {v!r}")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise InputError(f"{what} must hold finite numbers, got {v!r}")
        if positive and x <= 0:
            raise InputError(f"{what} must be > 0, got {v!r}")
        out.append(float(x))
    return tuple(out)


@dataclass(frozen=True)
class Preprocess:
    """The steps of the module docstring, validated; build with :meth:`from_dict`."""

    input_size: tuple[int, int, int]
    """``(C, H, W)`` of the model's input; C is 1 (grayscale) or 3 (RGB)."""
    resize: int | None
    """Shorter side in pixels before the crop; None: no resize."""
    interpolation: str
    mean: tuple[float, ...]
    """Per channel, in [0, 1] units."""
    std: tuple[float, ...]
    name: str = ""

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def crop(self) -> tuple[int, int]:
        """``(H, W)`` of the central window: the model's input size."""
        return self.input_size[1], self.input_size[2]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Validate a JSON object; every failure is one :class:`InputError` naming the key.

        Keys: ``input_size`` [C, H, W] (required), ``mean``, ``std`` (required), ``resize``
        (int or null; default: no resize), ``crop`` (int or [H, W]; must equal H, W when
        given), ``interpolation`` (default bilinear), ``name``.
        """
        if not isinstance(d, Mapping):
            raise InputError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        for key in ("input_size", "mean", "std"):
            if key not in d:
                raise InputError(f"preprocessing lacks {key!r}")
        size = d["input_size"]
        if not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 3:
            raise InputError(f"input_size must be [C, H, W], got {size!r}")
        c, h, w = (_int(v, "input_size") for v in size)
        if c not in (1, 3):
            raise InputError(f"input_size: {c} channels; images are read as 1 (L) or 3 (RGB)")
        crop = d.get("crop")
        if crop is not None:
            hw = [crop, crop] if isinstance(crop, int) and not isinstance(crop, bool) else crop
            if not isinstance(hw, Sequence) or len(hw) != 2:
                raise InputError(f"crop must be an integer or [H, W], got {crop!r}")
            hw = [_int(v, "crop") for v in hw]
            if tuple(hw) != (h, w):
                raise InputError(f"crop {crop!r} differs from input_size's H, W ({h}, {w})")
        resize = d.get("resize")
        if resize is not None:
            resize = _int(resize, "resize")
        interp = d.get("interpolation", "bilinear")
        if interp not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interp!r}")
        name = d.get("name", "")
        if not isinstance(name, str):
            raise InputError(f"name must be a string, got {name!r}")
        return cls(
            (c, h, w),
            resize,
            interp,
            _floats(d["mean"], c, "mean"),
            _floats(d["std"], c, "std", positive=True),
            name,
        )

    @classmethod
    def square(
        cls, channels: int, size: int, mean: Sequence[float], std: Sequence[float], name: str = ""
    ) -> Preprocess:
        """compatkit's own models: shorter side to ``size``, then the central square."""
        return cls.from_dict(
            {"input_size": [channels, size, size], "resize": size, "mean": list(mean)}
            | {"std": list(std), "name": name}
        )

    @classmethod
    def from_timm(cls, cfg: Mapping[str, Any], name: str = "") -> Preprocess:
        """timm's data config (``resolve_data_config``): ``input_size``, ``crop_pct``,
        ``interpolation``, ``mean``, ``std``; the resize is ``floor(size / crop_pct)``, as in
        timm's eval transform (``crop_mode`` center)."""
        c, h, w = (int(v) for v in cfg["input_size"])
        pct = float(cfg.get("crop_pct") or 1.0)
        interp = str(cfg.get("interpolation") or "bilinear")
        d = {
            "input_size": [c, h, w],
            "resize": math.floor(min(h, w) / pct),
            "interpolation": interp if interp in INTERPOLATIONS else "bilinear",
            "mean": [float(v) for v in cfg["mean"]],
            "std": [float(v) for v in cfg["std"]],
            "name": name,
        }
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        """The JSON object :meth:`from_dict` reads (also what ``export`` writes beside a file)."""
        return {
            "input_size": list(self.input_size),
            "resize": self.resize,
            "crop": [self.input_size[1], self.input_size[2]],
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "name": self.name,
        }

    def normalizer(self) -> Normalize:
        return Normalize(self.mean, self.std)

    def with_channels(self, channels: int) -> Preprocess:
        """The same steps for another channel count (grayscale <-> RGB): mean and std of one
        channel are repeated, of three averaged."""
        if channels == self.channels:
            return self
        if channels == 3:
            mean, std = self.mean * 3, self.std * 3
        else:
            mean, std = (sum(self.mean) / 3,), (sum(self.std) / 3,)
        return Preprocess(
            (channels, *self.crop), self.resize, self.interpolation, mean, std, self.name
        )

    # ------------------------------------------------------------------ one image (PIL)

    def image(self, img: Any) -> torch.Tensor:
        """A decoded PIL image -> ``(C, H, W)`` uint8 tensor of the model's input size."""
        mode = "RGB" if self.channels == 3 else "L"
        if img.mode != mode:
            img = img.convert(mode)
        if self.resize is not None:
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            s_new, l_new = self.resize, int(self.resize * long / short)
            size = (s_new, l_new) if w <= h else (l_new, s_new)
            if size != (w, h):
                img = img.resize(size, _pil_filter(self.interpolation))
        arr = np.array(img, dtype=np.uint8)  # a writable copy: torch shares its memory
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return center_crop(torch.from_numpy(arr).permute(2, 0, 1), *self.crop).contiguous()

    # ------------------------------------------------------------------ batches (tensors)

    def tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The same steps on uint8 ``(N, C, h, w)`` tensors (a registered dataset), resizing
        with torch's antialiased interpolation (within one grey level of Pillow's)."""
        if self.resize is not None:
            n, c, h, w = images.shape
            nh = self.resize if h <= w else int(self.resize * h / w)
            nw = self.resize if w < h else int(self.resize * w / h)
            if (nh, nw) != (h, w):
                mode = _TENSOR_MODES.get(self.interpolation, "bilinear")
                out = torch.empty(n, c, nh, nw, dtype=torch.uint8)
                for s in range(0, n, 4096):  # 4096 images at a time bound the float copy
                    x = images[s : s + 4096].float()
                    kw = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
                    x = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
                    out[s : s + 4096] = x.round().clamp(0, 255).to(torch.uint8)
                images = out
        return center_crop(images, *self.crop)


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The central ``h x w`` window of ``(..., H, W)``, zero-padded where ``x`` is smaller
    (offsets as torchvision's ``CenterCrop``: ``round((H - h) / 2)``)."""
    ih, iw = x.shape[-2:]
    if ih < h or iw < w:
        pt, pl = (max(0, h - ih)) // 2, (max(0, w - iw)) // 2
        x = F.pad(x, (pl, max(0, w - iw) - pl, pt, max(0, h - ih) - pt))
        ih, iw = x.shape[-2:]
    top, left = round((ih - h) / 2.0), round((iw - w) / 2.0)
    return x[..., top : top + h, left : left + w]
