"""Batched augmentation and normalisation of uint8 image batches.

IAM-CL2R reference (Biondi et al., CVPR 2024; docs/method.md §4): random
crop of the original size from the image zero-padded by 4 pixels, and a random
horizontal flip. Done here for a whole batch at once, on the batch's device,
as in airbench: pad once, then one gather whose row/column indices encode
every sample's crop offset and flip. There is no per-sample Python, so the
cost is one indexing kernel per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["Normalize", "augment", "crop_flip", "sample_augment_params", "to_float"]


def sample_augment_params(
    batch: int,
    padding: int,
    flip: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw per-sample ``(dy, dx, flipped)`` for :func:`crop_flip`.

    ``dy, dx`` in ``[0, 2 * padding]`` are the top-left corner of the crop in the padded
    image (pixels); ``flipped`` is a bool mask. Drawn on the generator's device, then
    moved to ``device``, so a CPU seed gives the same augmentation on any device.
    """
    gen_device = generator.device if generator is not None else torch.device(device)
    dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=gen_device)
    dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=gen_device)
    if flip:
        flipped = torch.rand(batch, generator=generator, device=gen_device) < 0.5
    else:
        flipped = torch.zeros(batch, dtype=torch.bool, device=gen_device)
    return dy.to(device), dx.to(device), flipped.to(device)


def crop_flip(
    images: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flipped: torch.Tensor,
    padding: int,
) -> torch.Tensor:
    """Crop each image of ``images`` (B, C, H, W) at ``(dy, dx)`` of its zero-padded copy and
    mirror it left-right where ``flipped``; the output has the input's shape and dtype."""
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)  # (B, H) rows of the padded image
    cols_fwd = torch.arange(w, device=dev)
    cols = dx.to(dev)[:, None] + torch.where(
        flipped.to(dev)[:, None], cols_fwd.flip(0), cols_fwd
    )  # (B, W); a flip reads the crop's columns right to left
    # Rows first, then columns: two gathers of B*C*H*(W+2p) and B*C*H*W elements instead of
    # one 4-D advanced index whose broadcast index tensors are 4x the image size.
    wp = padded.shape[3]
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, wp))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def augment(
    images: torch.Tensor,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop with zero padding (``padding`` pixels per side) + random horizontal flip.

    ``images``: uint8 ``(B, C, H, W)`` on any device; returns a new uint8 tensor of the same
    shape on the same device. Labels are untouched by construction (only images go in).
    """
    if images.dim() != 4:
        raise ValueError(f"augment expects (B, C, H, W), got {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0 pixels, got {padding}")
    if padding == 0 and not flip:
        return images.clone()
    dy, dx, flipped = sample_augment_params(
        images.shape[0], padding, flip, generator, images.device
    )
    return crop_flip(images, dy, dx, flipped, padding)


class Normalize:
    """The one input scaling of compatkit: uint8 ``(B, C, H, W)`` -> ``(x / 255 - mean) / std``.

    ``mean`` and ``std`` are per channel in [0, 1] units (see ``DATASET_STATS``). Training,
    evaluation, analysis and embedding all call this object, so a model sees the same input
    scaling wherever it runs. The constants are kept per device (a batch on the GPU is scaled
    there); ``channels_last`` returns the batch in that memory format (for CUDA convolutions).
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
    ) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values and std {len(std)}")
        if any(float(v) <= 0 for v in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.channels_last = channels_last
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            m = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            s = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            self._on[device] = (m, s)
        return self._on[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        c = images.shape[-3]
        if len(self.mean) != c:
            raise ValueError(f"{c} channels but mean and std have {len(self.mean)} values")
        m, s = self._constants(images.device)
        y = (images.float() / 255.0 - m) / s
        return y.contiguous(memory_format=torch.channels_last) if self.channels_last else y

    def __repr__(self) -> str:
        return f"Normalize(mean={list(self.mean)}, std={list(self.std)})"


def to_float(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(..., C, H, W)`` -> float32 ``(x / 255 - mean) / std`` (see :class:`Normalize`)."""
    if images.dim() == 3:
        return Normalize(mean, std)(images.unsqueeze(0))[0]
    return Normalize(mean, std)(images)
