"""Image folders: PNG round trips, class naming, splits, sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compatkit.data import load_dataset


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_rgb_round_trip_sorted_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    written = {}
    for cls in ("zebra", "ant", "moose"):
        for i in range(2):
            arr = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)  # H=6, W=5
            write_png(tmp_path / cls / f"{i}.png", arr)
            written[(cls, i)] = arr
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    s = load_dataset("folder", root=tmp_path)
    assert s.classes == ["ant", "moose", "zebra"]
    assert s.images.shape == (6, 3, 6, 5) and s.images.dtype == torch.uint8
    assert s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for k, (cls, i) in enumerate((c, i) for c in s.classes for i in range(2)):
        expected = torch.from_numpy(written[(cls, i)]).permute(2, 0, 1)
        assert torch.equal(s.images[k], expected)


def test_grayscale_stays_one_channel_mixed_becomes_rgb(tmp_path: Path) -> None:
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    write_png(tmp_path / "g" / "a" / "x.png", gray)
    write_png(tmp_path / "g" / "b" / "y.png", gray[::-1].copy())
    s = load_dataset("folder", root=tmp_path / "g")
    assert s.images.shape == (2, 1, 4, 4)
    assert torch.equal(s.images[0, 0], torch.from_numpy(gray))

    write_png(tmp_path / "m" / "a" / "x.png", gray)
    write_png(tmp_path / "m" / "b" / "y.png", np.zeros((4, 4, 3), np.uint8))
    m = load_dataset("folder", root=tmp_path / "m")
    assert m.images.shape == (2, 3, 4, 4)
    assert torch.equal(m.images[0, 1], torch.from_numpy(gray))  # gray replicated to RGB


def test_train_test_subfolders_share_labels(tmp_path: Path) -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    for cls in ("cat", "dog"):
        write_png(tmp_path / "train" / cls / "0.png", img)
    write_png(tmp_path / "test" / "dog" / "0.png", img)
    write_png(tmp_path / "test" / "eel" / "0.png", img)
    train = load_dataset("folder", "train", root=tmp_path)
    test = load_dataset("folder", "test", root=tmp_path)
    assert train.classes == test.classes == ["cat", "dog", "eel"]
    assert train.labels.tolist() == [0, 1]
    assert test.labels.tolist() == [1, 2]


def test_no_test_split_without_subfolders(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="only has a 'train' split"):
        load_dataset("folder", "test", root=tmp_path)


def test_sizes_must_agree_or_be_resized(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "0.png", np.full((8, 12, 3), 200, np.uint8))
    write_png(tmp_path / "b" / "0.png", np.full((10, 10, 3), 50, np.uint8))
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("folder", root=tmp_path)
    s = load_dataset("folder", root=tmp_path, image_size=6)
    assert s.images.shape == (2, 3, 6, 6)
    assert int(s.images[0].min()) == int(s.images[0].max()) == 200  # flat colour survives
    with pytest.raises(ValueError, match="positive"):
        load_dataset("folder", root=tmp_path, image_size=0)


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    arr = np.zeros((4, 8), np.uint8)
    arr[:, 2:6] = 255  # the central 4x4 square is white, the borders black
    write_png(tmp_path / "a" / "0.png", arr)
    s = load_dataset("folder", root=tmp_path, image_size=4)
    assert s.images.shape == (1, 1, 4, 4)
    assert int(s.images.min()) == 255


def test_missing_or_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root="):
        load_dataset("folder", root=tmp_path / "absent")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match="cannot be downloaded"):
        load_dataset("folder", root=tmp_path, download=True)
