"""ImageSet: validation, selection, device moves."""

from __future__ import annotations

import pytest
import torch

from compatkit.data import ImageSet

from .helpers import make_set, sample_ids


def test_properties_and_len() -> None:
    s = make_set([3, 4], channels=3, size=8)
    assert len(s) == 7
    assert (s.channels, s.height, s.width) == (3, 8, 8)
    assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
    assert s.present_classes() == [0, 1]


def test_contiguous_and_int64_labels() -> None:
    images = torch.zeros(2, 5, 4, 3, dtype=torch.uint8).permute(0, 3, 1, 2)  # NHWC view
    assert not images.is_contiguous()
    s = ImageSet(images, torch.tensor([0, 1], dtype=torch.int32), ["a", "b"])
    assert s.images.is_contiguous() and torch.equal(s.images, images)
    assert s.labels.dtype == torch.int64


@pytest.mark.parametrize(
    ("images", "labels", "error", "match"),
    [
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 0]), TypeError, "uint8"),
        (torch.zeros(2, 4, 4, dtype=torch.uint8), torch.tensor([0, 0]), ValueError, "N, C, H, W"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0]), ValueError, "shape"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0.0, 1.0]), TypeError, "int"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ValueError, "2 class"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, -1]), ValueError, "span"),
    ],
)
def test_refuses_bad_tensors(images, labels, error, match) -> None:
    with pytest.raises(error, match=match):
        ImageSet(images, labels, ["a", "b"])


def test_subset_by_positions_mask_and_empty() -> None:
    s = make_set([5, 5], shuffle=True)
    sub = s.subset([7, 2, 2])
    assert sample_ids(sub.images).tolist() == [7, 2, 2]
    assert sub.labels.tolist() == [int(s.labels[7]), int(s.labels[2]), int(s.labels[2])]
    assert sub.classes == s.classes

    mask = s.labels == 1
    by_mask = s.subset(mask)
    assert torch.equal(by_mask.images, s.images[mask])

    by_tensor = s.subset(torch.tensor([9, 0]))
    assert sample_ids(by_tensor.images).tolist() == [9, 0]

    empty = s.subset([])
    assert len(empty) == 0 and empty.images.shape[1:] == s.images.shape[1:]

    with pytest.raises(TypeError):
        s.subset(torch.tensor([0.0]))


def test_subset_copies() -> None:
    s = make_set([2, 2])
    sub = s.subset([0])
    sub.images.zero_()
    assert s.images[0].any()


def test_select_classes_keeps_original_labels_and_order() -> None:
    s = make_set([3, 4, 5, 6], shuffle=True)
    sel = s.select_classes([3, 1])
    expected = [i for i in range(len(s)) if int(s.labels[i]) in (1, 3)]
    assert sample_ids(sel.images).tolist() == expected  # dataset order
    assert sorted(set(sel.labels.tolist())) == [1, 3]  # labels not remapped
    assert sel.classes == s.classes
    assert len(s.select_classes([])) == 0


def test_to_device_keeps_uint8() -> None:
    s = make_set([2, 2]).to("cpu")
    assert s.images.dtype == torch.uint8 and s.device == torch.device("cpu")
    assert "ImageSet(n=4" in repr(s)
