"""Listing image collections (what is left out, with counts) and reading them lazily."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compatkit.data.collection import list_file, list_folder
from compatkit.data.preprocess import Preprocess
from compatkit.data.stream import ReadReport, iter_batches, read_all
from compatkit.errors import DataError, InputError


def _img(path: Path, h: int = 30, w: int = 40, value: int = 100, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path, format=fmt)


def test_left_out_entries_are_counted_and_named(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(3):
            _img(root / c / f"{i}.png")
    _img(root / "a" / ".hidden.png")
    (root / "a" / "notes.txt").write_text("x")
    os.mkfifo(root / "a" / "pipe.png")
    os.symlink(root / "a" / "gone.png", root / "a" / "dangling.png")
    _img(root / "a" / "nested" / "deep.png")
    (root / ".cache").mkdir()
    outside = tmp_path / "elsewhere" / "c"
    _img(outside / "0.png")
    os.symlink(outside, root / "c")  # a class folder that leads out of the data folder
    _img(root / "stray.png")
    coll = list_folder(root)
    assert coll.classes == ["a", "b"] and len(coll) == 6
    assert coll.ids()[:3] == ["a/0.png", "a/1.png", "a/2.png"]
    counts = dict(coll.left_out.counts)
    assert counts == {
        "hidden": 2,
        "not_image": 1,
        "special": 1,
        "dangling": 1,
        "nested": 1,
        "outside": 1,
        "top_files": 1,
    }
    line = coll.left_out.summary()
    assert "1 FIFOs, sockets or devices (e.g. a/pipe.png)" in line and "\n" not in line
    followed = list_folder(root, follow_links=True)
    assert followed.classes == ["a", "b", "c"] and len(followed) == 7


def test_flat_folder_is_an_unlabelled_gallery_and_lists_read_paths(tmp_path: Path) -> None:
    for i in range(3):
        _img(tmp_path / "flat" / f"{i}.jpg", fmt="JPEG")
    coll = list_folder(tmp_path / "flat")
    assert not coll.labelled and len(coll) == 3 and coll.classes == []
    (tmp_path / "l.csv").write_text("path,label\nflat/0.jpg,cat\nflat/2.jpg,dog\n")
    lst = list_file(tmp_path / "l.csv")
    assert lst.labelled and lst.classes == ["cat", "dog"] and lst.labels.tolist() == [0, 1]
    assert lst.path(1) == tmp_path / "flat" / "2.jpg"
    (tmp_path / "l.jsonl").write_text('{"path": "flat/1.jpg"}\n')
    assert not list_file(tmp_path / "l.jsonl").labelled
    (tmp_path / "bad.csv").write_text("flat/0.jpg,cat\nflat/1.jpg\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: no label"):
        list_file(tmp_path / "bad.csv")


def test_preprocess_resizes_the_shorter_side_and_crops_like_torchvision(tmp_path: Path) -> None:
    pre = Preprocess.from_dict(
        {"input_size": [3, 8, 8], "resize": 10, "mean": [0] * 3, "std": [1] * 3}
    )
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 18:22] = 255  # a white band in the middle survives the crop
    x = pre.image(Image.fromarray(arr))
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8
    assert int(x[:, :, 3:5].min()) > 100 and int(x[:, :, 0].max()) == 0
    with pytest.raises(InputError, match="crop"):
        Preprocess.from_dict({**pre.to_dict(), "crop": 9})


def test_unreadable_files_are_skipped_with_a_count_or_refused(tmp_path: Path) -> None:
    for i in range(5):
        _img(tmp_path / "a" / f"{i}.png", h=20 + i, w=30, value=10 * i)
    (tmp_path / "a" / "2.png").write_bytes(b"not an image")
    coll = list_folder(tmp_path)
    pre = Preprocess.square(3, 16, [0] * 3, [1] * 3)
    rep = ReadReport()
    images, kept = read_all(coll, pre, workers=2, report=rep)
    assert images.shape == (4, 3, 16, 16) and kept.tolist() == [0, 1, 3, 4]
    assert rep.skipped == 1 and rep.errors[0].startswith(f"{tmp_path / 'a' / '2.png'}: not a")
    with pytest.raises(DataError, match=r"2\.png: not a readable image"):
        list(iter_batches(coll, pre, batch_size=2, strict=True))


def _torchvision():
    try:
        import torchvision.transforms as T
    except (ImportError, RuntimeError):  # missing, or a build that does not match torch
        return None
    return T


@pytest.mark.skipif(_torchvision() is None, reason="torchvision does not import here")
@pytest.mark.parametrize("interp", ["bilinear", "bicubic", "nearest"])
def test_same_pixels_as_torchvision_resize_and_center_crop(interp: str) -> None:
    T = _torchvision()
    rng = np.random.default_rng(0)
    pre = Preprocess.from_dict(
        {"input_size": [3, 32, 32], "resize": 37, "interpolation": interp}
        | {"mean": [0] * 3, "std": [1] * 3}
    )
    mode = getattr(T.InterpolationMode, interp.upper())
    tf = T.Compose([T.Resize(37, interpolation=mode), T.CenterCrop(32), T.PILToTensor()])
    for h, w in ((50, 91), (91, 50), (41, 41), (30, 44)):
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        assert torch.equal(pre.image(img), tf(img)), (h, w)
