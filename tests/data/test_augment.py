"""Batched crop + flip against a slow per-sample reference; normalisation."""

from __future__ import annotations

import pytest
import torch

from compatkit.data import augment, crop_flip, sample_augment_params, to_float


def batch(b: int = 16, c: int = 3, h: int = 8, w: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, c, h, w), dtype=torch.uint8, generator=g)  # no zeros


def slow_reference(images, dy, dx, flipped, padding):
    """The textbook definition, one sample at a time: zero-pad, cut the window, mirror."""
    b, c, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(b):
        padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=images.dtype)
        padded[:, padding : padding + h, padding : padding + w] = images[i]
        y, x = int(dy[i]), int(dx[i])
        crop = padded[:, y : y + h, x : x + w]
        out[i] = torch.flip(crop, dims=[2]) if bool(flipped[i]) else crop
    return out


@pytest.mark.parametrize("padding", [0, 1, 4])
@pytest.mark.parametrize("flip", [True, False])
def test_matches_slow_reference_with_same_draws(padding: int, flip: bool) -> None:
    images = batch(b=64)
    out = augment(images, padding, flip, torch.Generator().manual_seed(5))
    if padding == 0 and not flip:
        assert torch.equal(out, images)
        return
    dy, dx, flipped = sample_augment_params(64, padding, flip, torch.Generator().manual_seed(5))
    assert torch.equal(out, slow_reference(images, dy, dx, flipped, padding))
    assert out.shape == images.shape and out.dtype == torch.uint8
    # The draws cover the whole range and both flip states (64 samples make a miss unlikely
    # enough that a failure means a bug in the ranges).
    assert int(dy.min()) >= 0 and int(dy.max()) <= 2 * padding
    if padding:
        assert len(set(dy.tolist())) > 1 and len(set(dx.tolist())) > 1
    assert bool(flipped.any()) == flip


def test_identity_without_padding_and_flip() -> None:
    images = batch()
    out = augment(images, padding=0, flip=False)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


def test_flip_is_torch_flip_of_the_crop() -> None:
    images = batch(b=4)
    dy = torch.tensor([0, 2, 4, 8])
    dx = torch.tensor([8, 4, 1, 0])
    unflipped = crop_flip(images, dy, dx, torch.zeros(4, dtype=torch.bool), padding=4)
    flipped = crop_flip(images, dy, dx, torch.ones(4, dtype=torch.bool), padding=4)
    assert torch.equal(flipped, torch.flip(unflipped, dims=[3]))
    # Centre offset (padding, padding) without flip returns the image itself.
    centre = torch.full((4,), 4)
    same = crop_flip(images, centre, centre, torch.zeros(4, dtype=torch.bool), padding=4)
    assert torch.equal(same, images)


def test_crops_are_windows_of_the_padded_image() -> None:
    images = batch(b=1, c=1, h=3, w=3)
    p = 2
    corner = crop_flip(images, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), p)
    # Top-left window of the zero-padded image: the image lands in the bottom-right 1x1 pixel.
    expected = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    expected[0, 0, 2, 2] = images[0, 0, 0, 0]
    assert torch.equal(corner, expected)


def test_generator_reproducibility_and_labels_untouched() -> None:
    images = batch()
    labels = torch.arange(16)
    a = augment(images, generator=torch.Generator().manual_seed(1))
    b = augment(images, generator=torch.Generator().manual_seed(1))
    c = augment(images, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(labels, torch.arange(16))  # augment never sees the labels


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        augment(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="padding"):
        augment(batch(), padding=-1)


def test_to_float_normalises_per_channel() -> None:
    images = batch(b=5)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = to_float(images, mean, std)
    assert out.dtype == torch.float32 and out.shape == images.shape
    slow = torch.empty(images.shape)
    for ch in range(3):
        slow[:, ch] = (images[:, ch].double() / 255 - mean[ch]) / std[ch]
    torch.testing.assert_close(out, slow, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        to_float(images, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="positive"):
        to_float(images, mean, (0.2, 0.0, 0.4))


def test_runs_on_the_data_device() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        images = batch().to(dev)
        out = augment(images, generator=torch.Generator().manual_seed(3))
        assert out.device == images.device
        ref = augment(images.cpu(), generator=torch.Generator().manual_seed(3))
        assert torch.equal(out.cpu(), ref)  # a CPU seed gives the same crops on any device
        assert to_float(out, (0.5,) * 3, (0.5,) * 3).device == images.device
