"""MNIST-family loaders, root resolution, verified downloads, registry, channel stats."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import compatkit.data.datasets as ds
from compatkit.data import (
    DATASET_STATS,
    DATASETS,
    ChecksumError,
    IdxFormatError,
    channel_stats,
    dataset_root,
    download_file,
    load_dataset,
)

ENV_VARS = ("COMPATKIT_DATA", "COMPATKIT_FASHION_MNIST", "COMPATKIT_MNIST", "XDG_CACHE_HOME")


@pytest.fixture(autouse=True)
def isolated_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see the machine's real data folders unless it asks for them."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ds, "SYSTEM_LOCATIONS", {"fashion-mnist": tmp_path / "system" / "fm"})


def idx(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_mnist_like(folder: Path, n_train: int = 7, n_test: int = 3, gz: bool = True) -> dict:
    """Write the four files in the exact distributed format; return what was written."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for kind, code, arr in (("images-idx3", 0x08, images), ("labels-idx1", 0x08, labels)):
            data = idx(code, arr.shape, arr.tobytes())
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_round_trip(tmp_path: Path, gz: bool) -> None:
    written = write_mnist_like(tmp_path / "fm", gz=gz)
    train = load_dataset("fashion-mnist", "train", root=tmp_path / "fm")
    test = load_dataset("fashion-mnist", "test", root=tmp_path / "fm")
    for split, prefix in ((train, "train"), (test, "t10k")):
        images, labels = written[prefix]
        assert split.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(split.images[:, 0], torch.from_numpy(images))
        assert split.labels.tolist() == labels.tolist()
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"


def test_mnist_in_torchvision_layout(tmp_path: Path) -> None:
    written = write_mnist_like(tmp_path / "mnist" / "MNIST" / "raw")
    s = load_dataset("mnist", root=tmp_path / "mnist")
    assert s.labels.tolist() == written["train"][1].tolist()
    assert s.classes == [str(d) for d in range(10)]


def test_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist", root=tmp_path / "empty")
    msg = str(err.value)
    assert str(tmp_path / "empty") in msg
    assert "train-images-idx3-ubyte" in msg and "download=True" in msg
    assert "dataset-fashion-mnist" in msg and "COMPATKIT_FASHION_MNIST" in msg

    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist")  # nothing anywhere: lists every place searched
    msg = str(err.value)
    assert "$COMPATKIT_FASHION_MNIST (unset)" in msg
    assert str(tmp_path / "system" / "fm") in msg and "cache" in msg


def test_refuses_inconsistent_files(tmp_path: Path) -> None:
    root = tmp_path / "fm"
    write_mnist_like(root)
    lab = root / "train-labels-idx1-ubyte.gz"
    lab.write_bytes(gzip.compress(idx(0x08, (6,), bytes(6))))  # 7 images, 6 labels
    with pytest.raises(IdxFormatError, match="7 images"):
        load_dataset("fashion-mnist", root=root)
    lab.write_bytes(gzip.compress(idx(0x08, (7,), bytes([0, 1, 2, 3, 4, 5, 10]))))
    with pytest.raises(IdxFormatError, match="label 10"):
        load_dataset("fashion-mnist", root=root)
    lab.write_bytes(gzip.compress(idx(0x0C, (7,), bytes(28))))  # int32 labels
    with pytest.raises(IdxFormatError, match="uint8 labels"):
        load_dataset("fashion-mnist", root=root)
    img = root / "train-images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(idx(0x08, (7, 28, 28), bytes(7 * 28 * 28 - 5))))
    with pytest.raises(IdxFormatError, match="truncated"):
        load_dataset("fashion-mnist", root=root)


def test_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "home" / ".cache" / "compatkit" / "fashion-mnist"
    system = tmp_path / "system" / "fm"
    data_dir = tmp_path / "shared"
    # Nothing exists: the download target is the cache folder.
    assert dataset_root("fashion-mnist") == cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dataset_root("fashion-mnist") == tmp_path / "xdg" / "compatkit" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    # ... or $COMPATKIT_DATA/<name> when that variable is set.
    monkeypatch.setenv("COMPATKIT_DATA", str(data_dir))
    assert dataset_root("fashion-mnist") == data_dir / "fashion-mnist"
    # Existing folders win in order: $COMPATKIT_DATA/<name> > system package > cache.
    cache.mkdir(parents=True)
    assert dataset_root("fashion-mnist") == cache
    system.mkdir(parents=True)
    assert dataset_root("fashion-mnist") == system
    (data_dir / "fashion-mnist").mkdir(parents=True)
    assert dataset_root("fashion-mnist") == data_dir / "fashion-mnist"
    # The dataset's own variable beats all of those, the argument beats everything.
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(tmp_path / "env"))
    assert dataset_root("fashion-mnist") == tmp_path / "env"
    assert dataset_root("fashion_mnist", root=tmp_path / "arg") == tmp_path / "arg"
    # Other datasets have their own variable and no system location.
    monkeypatch.setenv("COMPATKIT_MNIST", str(tmp_path / "m"))
    assert dataset_root("mnist") == tmp_path / "m"
    assert dataset_root("cifar10") == data_dir / "cifar10"


def test_env_var_is_used_by_the_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_mnist_like(tmp_path / "via_env")
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(tmp_path / "via_env"))
    assert load_dataset("fashion-mnist").labels.tolist() == written["train"][1].tolist()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_checksum_and_writes_atomically(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"some dataset bytes")
    dest = tmp_path / "out" / "file.gz"
    with pytest.raises(ChecksumError, match="MD5"):
        download_file(src.as_uri(), dest, md5="0" * 32)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no partial file left behind
    download_file(src.as_uri(), dest, md5=md5(src))
    assert dest.read_bytes() == b"some dataset bytes"


def test_download_true_fetches_only_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """download=True with the mirror replaced by a local folder (file:// URLs, no network)."""
    mirror = tmp_path / "mirror"
    written = write_mnist_like(mirror)
    spec = ds._IDX_SPECS["mnist"]
    monkeypatch.setattr(spec, "base_url", mirror.as_uri() + "/")
    monkeypatch.setattr(spec, "md5", {p.name: md5(p) for p in mirror.iterdir()})
    target = tmp_path / "target"
    s = load_dataset("mnist", "test", root=target, download=True)
    assert s.labels.tolist() == written["t10k"][1].tolist()
    assert sorted(p.name for p in target.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    # A tampered mirror is refused, and nothing lands under the final name.
    bad = dict(spec.md5)
    bad["train-labels-idx1-ubyte.gz"] = "f" * 32
    monkeypatch.setattr(spec, "md5", bad)
    with pytest.raises(ChecksumError):
        load_dataset("mnist", "train", root=target, download=True)
    assert not (target / "train-labels-idx1-ubyte.gz").exists()


def test_cifar_download_true_from_local_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarfile

    from compatkit.data.cifar import CIFAR_LAYOUTS

    from .test_cifar import make_cifar10

    _, train_y, _, _ = make_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    layout = CIFAR_LAYOUTS["cifar10"]
    monkeypatch.setattr(layout, "url", archive.as_uri())
    monkeypatch.setattr(layout, "md5", md5(archive))
    s = load_dataset("cifar10", root=tmp_path / "dl", download=True)
    assert s.labels.tolist() == train_y
    assert (tmp_path / "dl" / "cifar-10-python.tar.gz").is_file()


def test_registry_and_errors() -> None:
    assert set(DATASETS) == {
        "fashion-mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "folder",
        "imagenet32",
    }
    assert set(DATASET_STATS) == {"fashion-mnist", "mnist", "cifar10", "cifar100"}
    for name, (mean, std) in DATASET_STATS.items():
        assert len(mean) == len(std) == (1 if "mnist" in name else 3)
        assert all(0 < v < 1 for v in (*mean, *std))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("mnist", split="val")


def test_channel_stats_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(50, 3, 5, 7), dtype=np.uint8)
    mean, std = channel_stats(torch.from_numpy(arr), chunk=7)  # several chunks
    x = arr.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-8)


REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist


@pytest.mark.skipif(
    not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist() -> None:
    train = load_dataset("fashion-mnist", "train", root=REAL_FASHION_MNIST)
    test = load_dataset("fashion-mnist", "test", root=REAL_FASHION_MNIST)
    assert train.images.shape == (60000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean, std = channel_stats(train.images)
    np.testing.assert_allclose(mean, DATASET_STATS["fashion-mnist"][0], atol=1e-4)
    np.testing.assert_allclose(std, DATASET_STATS["fashion-mnist"][1], atol=1e-4)
