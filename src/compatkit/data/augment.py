"""Batched augmentation and normalisation of uint8 image batches.

IAM-CL2R reference (Biondi et al., CVPR 2024; METHOD.md "Protocol"): random
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

__all__ = ["augment", "crop_flip", "sample_augment_params", "to_float"]


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


def to_float(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 ``(x / 255 - mean) / std`` per channel.

    ``mean`` and ``std`` are per channel in [0, 1] units (see ``DATASET_STATS``). Folded
    into one multiply-add: ``x * (1 / (255 std)) - mean / std``.
    """
    c = images.shape[-3]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"{c} channels but mean has {len(mean)} and std {len(std)} values")
    if any(float(v) <= 0 for v in std):
        raise ValueError(f"std must be positive, got {list(std)}")
    dev = images.device
    m = torch.tensor(mean, dtype=torch.float32, device=dev).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=dev).view(-1, 1, 1)
    return torch.addcmul(-m / s, images.to(torch.float32), 1.0 / (255.0 * s))
