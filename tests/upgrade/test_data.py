"""User data for the upgrade workflow: folders and registered datasets by name, ids, sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compatkit.data import load_dataset
from compatkit.errors import DataError
from compatkit.upgrade.data import (
    convert_channels,
    load_user_data,
    load_user_items,
    parse_spec,
    relabel,
    resize_images,
)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three classes, a different number of images each, every pixel value naming its file."""
    root = tmp_path / "imgs"
    value = 0
    for cls, n in (("zebra", 2), ("ant", 3), ("moose", 1)):
        for i in range(n):
            _png(root / cls / f"{i:02d}.png", np.full((6, 6), value, np.uint8))
            value += 10
    (root / "ant" / "readme.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def test_folder_names_and_ids_follow_the_files(folder: Path) -> None:
    data, ids = load_user_items(str(folder))
    assert data.classes == ["ant", "moose", "zebra"]
    assert len(ids) == len(data) == 6
    for i, item in enumerate(ids):
        cls, _ = item.split("/")
        assert data.classes[int(data.labels[i])] == cls
        on_disk = np.asarray(Image.open(folder / item))
        assert int(data.images[i, 0, 0, 0]) == int(on_disk[0, 0])  # image i is file ids[i]
    assert load_user_data(str(folder)).classes == data.classes


def test_folder_splits_and_spec_suffix(tmp_path: Path) -> None:
    img = np.zeros((4, 4), np.uint8)
    for split, classes in (("train", ("cat", "dog")), ("test", ("dog", "eel"))):
        for c in classes:
            _png(tmp_path / split / c / "0.png", img)
    test, ids = load_user_items(f"{tmp_path}:test")
    assert test.classes == ["cat", "dog", "eel"] and ids == ["test/dog/0.png", "test/eel/0.png"]
    assert load_user_data(str(tmp_path), split="test").labels.tolist() == [1, 2]
    assert parse_spec(str(tmp_path)) == ("folder", str(tmp_path), "train")
    with pytest.raises(DataError, match="names split 'test' but split 'train'"):
        load_user_data(f"{tmp_path}:test", split="train")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_user_data(f"{tmp_path}:val")


def test_registered_dataset_with_split(fake_fashion: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))
    test, ids = load_user_items("fashion-mnist:test")
    ref = load_dataset("fashion-mnist", "test")
    assert torch.equal(test.images, ref.images) and test.classes[0] == "T-shirt/top"
    assert ids[:2] == ["test/0", "test/1"]
    assert parse_spec("Fashion_MNIST") == ("dataset", "fashion-mnist", "train")
    big = load_user_data("fashion-mnist", image_size=32, channels=3)
    assert big.images.shape[1:] == (3, 32, 32)


def test_bad_specs_are_one_line_data_errors(tmp_path: Path) -> None:
    (tmp_path / "file.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "nope"): "no such folder, and not a registered dataset",
        str(tmp_path / "file.png"): "is a file",
        str(tmp_path / "empty"): "no class sub-folders",
        "": "give an image-folder path",
        "cifar10:validation": "unknown split 'validation'",
    }
    for spec, why in cases.items():
        with pytest.raises(DataError, match=why) as e:
            load_user_data(spec)
        assert "\n" not in str(e.value)


def test_missing_registered_dataset_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPATKIT_MNIST", str(tmp_path))
    with pytest.raises(DataError, match=r"^data mnist: MNIST \(train\) not found"):
        load_user_data("mnist")


def test_resize_matches_an_obvious_reference_and_keeps_squares() -> None:
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.uint8).view(2, 1, 4, 6)
    out = resize_images(x, 2)  # 4x6 -> 2x3 (shorter side 2), then the central 2x2
    ref = torch.nn.functional.interpolate(x.float(), size=(2, 3), mode="bilinear", antialias=True)
    assert torch.equal(out, ref[:, :, :, 0:2].round().to(torch.uint8))
    assert resize_images(x[:, :, :4, :4], 4) is not None
    assert torch.equal(resize_images(x[:, :, :4, :4].contiguous(), 4), x[:, :, :4, :4])


def test_channel_conversion() -> None:
    gray = torch.tensor([[[[0, 100], [200, 255]]]], dtype=torch.uint8)
    rgb = convert_channels(gray, 3)
    assert rgb.shape == (1, 3, 2, 2) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    assert torch.equal(convert_channels(rgb, 1), gray)  # luma weights sum to 1
    red = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    red[:, 0] = 255
    assert int(convert_channels(red, 1)) == round(0.299 * 255)
    with pytest.raises(DataError, match="2 channels"):
        convert_channels(torch.zeros(1, 2, 1, 1, dtype=torch.uint8), 3)


def test_relabel_by_name(folder: Path) -> None:
    data = load_user_data(str(folder))  # ant, moose, zebra
    names = ["zebra", "ant", "yak", "moose"]
    out = relabel(data, names)
    assert out.classes == names
    for i in range(len(data)):
        assert out.classes[int(out.labels[i])] == data.classes[int(data.labels[i])]
    with pytest.raises(DataError, match=r"\['moose'\] are not among"):
        relabel(data, ["ant", "zebra"])
