"""CIFAR python-pickle format: exact round trips, every accepted layout, safe unpickling."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from compatkit.data import (
    CifarFormatError,
    UnsafePickleError,
    load_dataset,
    restricted_loads,
)

PER_BATCH = 4  # images per batch file: tiny, the format is what is tested


def write_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def make_cifar10(
    parent: Path, seed: int = 0
) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """Write cifar-10-batches-py/ under ``parent``; return (train data, labels, test data,
    labels) with data as the raw (N, 3072) rows."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=PER_BATCH).tolist()
        write_pickle(
            folder / f"data_batch_{i}",
            {b"batch_label": b"training batch", b"data": x, b"labels": y, b"filenames": []},
        )
        train_x.append(x)
        train_y += y
    tx = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    ty = [9, 0, 5]
    write_pickle(folder / "test_batch", {b"data": tx, b"labels": ty})
    return np.concatenate(train_x), train_y, tx, ty


def make_cifar100(parent: Path) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(1)
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = [f"fine{k}".encode() for k in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"c"]})
    x = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    y = [99, 0, 42, 42, 7, 1]
    write_pickle(folder / "train", {b"data": x, b"fine_labels": y, b"coarse_labels": [0] * 6})
    write_pickle(folder / "test", {b"data": x[:2], b"fine_labels": y[:2], b"coarse_labels": [0, 0]})
    return x, y


def expected_images(rows: np.ndarray) -> torch.Tensor:
    """Slow, explicit reading of the row layout: R plane, G plane, B plane, each row-major."""
    n = rows.shape[0]
    out = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    for i in range(n):
        for c in range(3):
            for r in range(32):
                start = c * 1024 + r * 32
                out[i, c, r] = torch.from_numpy(rows[i, start : start + 32].copy())
    return out


def test_cifar10_round_trip_from_parent_and_folder(tmp_path: Path) -> None:
    train_x, train_y, test_x, test_y = make_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        train = load_dataset("cifar10", "train", root=root)
        assert train.images.shape == (5 * PER_BATCH, 3, 32, 32)
        assert train.images.dtype == torch.uint8
        assert torch.equal(train.images, expected_images(train_x))  # batches 1..5 in order
        assert train.labels.tolist() == train_y
        assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert torch.equal(test.images, expected_images(test_x))
    assert test.labels.tolist() == test_y


def test_cifar10_from_archive_without_extracting(tmp_path: Path) -> None:
    src = tmp_path / "src"
    train_x, train_y, _, _ = make_cifar10(src)
    archive_dir = tmp_path / "dl"
    archive_dir.mkdir()
    archive = archive_dir / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for root in (archive, archive_dir):
        train = load_dataset("cifar10", root=root)
        assert torch.equal(train.images, expected_images(train_x))
        assert train.labels.tolist() == train_y
    assert sorted(p.name for p in archive_dir.iterdir()) == ["cifar-10-python.tar.gz"]
    (src / "cifar-10-batches-py" / "data_batch_4").unlink()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    with pytest.raises(CifarFormatError, match="data_batch_4"):
        load_dataset("cifar10", root=archive)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    x, y = make_cifar100(tmp_path)
    train = load_dataset("cifar-100", "train", root=tmp_path)  # alias spelling accepted
    assert len(train.classes) == 100 and train.classes[42] == "fine42"
    assert train.labels.tolist() == y
    assert torch.equal(train.images, expected_images(x))
    assert len(load_dataset("cifar100", "test", root=tmp_path)) == 2


def test_restricted_unpickler_accepts_numpy_arrays_at_every_protocol() -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        obj = restricted_loads(pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=protocol))
        np.testing.assert_array_equal(obj[b"data"], arr)
        assert obj[b"labels"] == [1, 2]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_restricted_unpickler_refuses_code_execution(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker)}, protocol=protocol)
    with pytest.raises(UnsafePickleError, match="system"):
        restricted_loads(payload)
    assert not marker.exists()
    for evil in (eval, print, np.load, tarfile.open):
        with pytest.raises(pickle.UnpicklingError):
            restricted_loads(pickle.dumps(evil, protocol=protocol))


def test_malicious_batch_file_is_refused_with_its_path(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    write_pickle(batch, {b"data": _Evil(marker), b"labels": []})
    with pytest.raises(UnsafePickleError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_refuses_bad_content(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle(
        folder / "data_batch_2", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 0]}
    )
    with pytest.raises(CifarFormatError, match="3072"):
        load_dataset("cifar10", root=tmp_path)
    write_pickle(folder / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(CifarFormatError, match="labels"):
        load_dataset("cifar10", root=tmp_path)
    write_pickle(folder / "data_batch_2", {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})
    with pytest.raises(CifarFormatError, match="outside"):
        load_dataset("cifar10", root=tmp_path)
    write_pickle(folder / "data_batch_2", {b"data": np.zeros((1, 3072), np.uint8)})
    with pytest.raises(CifarFormatError, match="labels"):
        load_dataset("cifar10", root=tmp_path)
    raw = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=2)
    (folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CifarFormatError, match="data_batch_2"):
        load_dataset("cifar10", root=tmp_path)
    (folder / "data_batch_2").unlink()
    with pytest.raises(CifarFormatError, match="missing"):
        load_dataset("cifar10", root=tmp_path)


def test_missing_cifar_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "nowhere" in msg and "download=True" in msg and "COMPATKIT_CIFAR10" in msg
