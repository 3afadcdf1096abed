"""ImageNet32 batches (pickle and npz): exact round trips, 1-based labels, layouts, refusals."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from compatkit.data import UnsafePickleError, load_dataset
from compatkit.data.imagenet32 import (
    ImageNet32FormatError,
    load_imagenet32,
    read_class_map,
    read_imagenet32_batch,
)
from tests.data.formats import write_imagenet32_batch

PER_BATCH = 3  # images per batch file: the format is what is tested


def explicit_images(rows: np.ndarray) -> torch.Tensor:
    """Slow reading of the row layout: R plane, G plane, B plane, each 32 rows of 32."""
    out = torch.zeros(len(rows), 3, 32, 32, dtype=torch.uint8)
    for i in range(len(rows)):
        for c in range(3):
            for r in range(32):
                start = c * 1024 + r * 32
                out[i, c, r] = torch.from_numpy(rows[i, start : start + 32].copy())
    return out


def write_raw(folder: Path, stem: str, obj: dict, npz: bool, protocol: int = 4) -> None:
    """One batch exactly as the official scripts write it (no compatkit code involved)."""
    folder.mkdir(parents=True, exist_ok=True)
    if npz:
        np.savez(folder / f"{stem}.npz", **{k: np.asarray(v) for k, v in obj.items()})
    else:
        with open(folder / stem, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)


def make_imagenet32(
    root: Path, npz: bool = False, protocol: int = 4, bytes_keys: bool = False, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write Imagenet32_train[_npz]/ and Imagenet32_val[_npz]/ under ``root``; return, per
    split, the raw rows and the **stored 1-based** labels in file order."""
    rng = np.random.default_rng(seed)
    suffix = "_npz" if npz else ""
    out = {}
    for split, folder, stems in (
        ("train", f"Imagenet32_train{suffix}", [f"train_data_batch_{i}" for i in range(1, 11)]),
        ("test", f"Imagenet32_val{suffix}", ["val_data"]),
    ):
        xs, ys = [], []
        for stem in stems:
            x = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
            y = rng.integers(1, 1001, size=PER_BATCH).tolist()
            y[0] = 1 if stem.endswith("_1") else y[0]  # the extremes of the 1-based range
            y[-1] = 1000 if stem == "val_data" else y[-1]
            obj: dict = {"data": x, "labels": y}
            if split == "train":
                obj["mean"] = x.mean(axis=0)
            if bytes_keys:  # a Python 2 pickle read with encoding="bytes"
                obj = {k.encode(): v for k, v in obj.items()}
            write_raw(root / folder, stem, obj, npz, protocol)
            xs.append(x)
            ys += y
        out[split] = (np.concatenate(xs), np.asarray(ys))
    return out


@pytest.mark.parametrize(
    ("npz", "protocol", "bytes_keys"),
    [(False, 2, True), (False, 3, False), (False, 4, False), (False, 5, False), (True, 4, False)],
)
def test_round_trip_exact_with_zero_based_labels(tmp_path, npz, protocol, bytes_keys):
    raw = make_imagenet32(tmp_path, npz=npz, protocol=protocol, bytes_keys=bytes_keys)
    for split in ("train", "test"):
        ds = load_imagenet32(split, root=tmp_path)
        rows, stored = raw[split]
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(rows), 3, 32, 32)
        assert torch.equal(ds.images, explicit_images(rows))
        assert ds.labels.tolist() == [y - 1 for y in stored.tolist()]
        assert len(ds.classes) == 1000 and ds.classes[0] == "class_0"
    assert len(load_imagenet32("train", root=tmp_path)) == 10 * PER_BATCH


def test_pickle_and_npz_forms_agree(tmp_path):
    make_imagenet32(tmp_path / "p", npz=False, seed=3)
    make_imagenet32(tmp_path / "z", npz=True, seed=3)
    a, b = load_imagenet32("train", tmp_path / "p"), load_imagenet32("train", tmp_path / "z")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_root_resolution_env_registry_and_batch_folder(tmp_path, monkeypatch):
    raw = make_imagenet32(tmp_path)
    monkeypatch.setenv("COMPATKIT_IMAGENET32", str(tmp_path))
    via_env = load_dataset("imagenet32", "test")
    assert via_env.labels.tolist() == [y - 1 for y in raw["test"][1].tolist()]
    # root may also be the folder holding the batch files themselves
    direct = load_dataset("imagenet32", "train", root=tmp_path / "Imagenet32_train")
    assert torch.equal(direct.images, explicit_images(raw["train"][0]))


def test_class_filter_while_reading_equals_subset_after(tmp_path):
    make_imagenet32(tmp_path, seed=5)
    full = load_imagenet32("train", tmp_path)
    keep = sorted(set(full.labels.tolist()))[::2]
    part = load_imagenet32("train", tmp_path, classes=keep)
    mask = torch.isin(full.labels, torch.tensor(keep))
    assert mask.sum() < len(full)  # the filter removes something
    assert torch.equal(part.images, full.images[mask])
    assert torch.equal(part.labels, full.labels[mask])  # labels keep their dataset value
    assert len(load_dataset("imagenet32", "train", tmp_path, classes=[])) == 0
    with pytest.raises(ValueError, match="1000"):
        load_imagenet32("train", tmp_path, classes=[1000])


def write_map(path: Path, order: list[int]) -> None:
    lines = [f"n{idx:08d} {idx} name_{idx}" for idx in order]
    path.write_text("\n".join(lines) + "\n")


def test_class_names_from_map_clsloc(tmp_path):
    make_imagenet32(tmp_path)
    write_map(tmp_path / "map_clsloc.txt", list(range(1000, 0, -1)))  # read by index column
    ds = load_imagenet32("test", tmp_path)
    assert ds.classes[0] == "name_1" and ds.classes[999] == "name_1000"
    assert read_class_map(tmp_path / "map_clsloc.txt")[41] == "name_42"
    write_map(tmp_path / "map_clsloc.txt", [1, 1, *range(3, 1001)])
    with pytest.raises(ImageNet32FormatError, match="repeated"):
        load_imagenet32("test", tmp_path)
    (tmp_path / "map_clsloc.txt").write_text("n01 x kit_fox\n")
    with pytest.raises(ImageNet32FormatError, match=r"map_clsloc\.txt:1"):
        read_class_map(tmp_path / "map_clsloc.txt")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    make_imagenet32(tmp_path)
    marker = tmp_path / "pwned"
    bad = {"data": np.zeros((1, 3072), np.uint8), "labels": [1], "x": _Evil(marker)}
    write_raw(tmp_path / "Imagenet32_val", "val_data", bad, npz=False)
    with pytest.raises(UnsafePickleError, match="val_data"):
        load_imagenet32("test", tmp_path)
    assert not marker.exists()


def test_npz_with_object_arrays_is_refused(tmp_path):
    folder = tmp_path / "Imagenet32_val_npz"
    folder.mkdir()
    labels = np.empty(1, dtype=object)
    labels[0] = 1
    np.savez(folder / "val_data.npz", data=np.zeros((1, 3072), np.uint8), labels=labels)
    with pytest.raises(ImageNet32FormatError, match="plain-array"):
        load_imagenet32("test", tmp_path)


@pytest.mark.parametrize(
    ("batch", "needle"),
    [
        ({"data": np.zeros((2, 3071), np.uint8), "labels": [1, 2]}, "shape"),
        ({"data": np.zeros((2, 3, 32, 32), np.uint8), "labels": [1, 2]}, "shape"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [1, 2]}, "uint8"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}, "labels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [1.0, 2.0]}, "integer"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}, "1-based"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 1001]}, "1-based"),
        ({"data": np.zeros((2, 3072), np.uint8)}, "labels"),
    ],
)
@pytest.mark.parametrize("npz", [False, True])
def test_bad_batches_are_refused_naming_the_file(tmp_path, batch, needle, npz):
    write_raw(tmp_path, "val_data", batch, npz=npz)
    name = "val_data.npz" if npz else "val_data"
    with pytest.raises(ImageNet32FormatError, match=needle) as e:
        read_imagenet32_batch(tmp_path / name)
    assert name in str(e.value)


def test_not_a_pickle_and_not_a_dict(tmp_path):
    (tmp_path / "val_data").write_bytes(b"\x00garbage")
    with pytest.raises(ImageNet32FormatError, match="readable"):
        read_imagenet32_batch(tmp_path / "val_data")
    write_raw(tmp_path, "val_data", [1, 2], npz=False)  # type: ignore[arg-type]
    with pytest.raises(ImageNet32FormatError, match="dict"):
        read_imagenet32_batch(tmp_path / "val_data")


def test_missing_files_say_what_where_and_how(tmp_path, monkeypatch):
    make_imagenet32(tmp_path)
    (tmp_path / "Imagenet32_train" / "train_data_batch_7").unlink()
    with pytest.raises(FileNotFoundError, match="train_data_batch_7") as e:
        load_imagenet32("train", tmp_path)
    assert "COMPATKIT_IMAGENET32" in str(e.value) and "image-net.org" in str(e.value)
    monkeypatch.delenv("COMPATKIT_IMAGENET32", raising=False)
    monkeypatch.setenv("COMPATKIT_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no batch file"):
        load_dataset("imagenet32", "test")


@pytest.mark.parametrize("npz", [False, True])
def test_writer_stores_one_based_labels_and_reads_back(tmp_path, npz):
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    out = write_imagenet32_batch(tmp_path / "val_data", images, [0, 999, 5, 5], npz=npz)
    assert out.name == ("val_data.npz" if npz else "val_data")
    if npz:
        with np.load(out) as z:
            stored = z["labels"].tolist()
    else:
        with open(out, "rb") as f:
            stored = pickle.load(f)["labels"]
    assert stored == [1, 1000, 6, 6]
    x, y = read_imagenet32_batch(out)
    assert np.array_equal(x, images) and y.tolist() == [0, 999, 5, 5]
