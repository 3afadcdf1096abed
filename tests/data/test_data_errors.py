"""Data that cannot be had or read is one line naming what, where and how to fix it.

Issue 10, item 8: a download without a network, a malicious CIFAR pickle, broken image files
and decompression bombs, and the CIFAR writer whose files its own loader refused. "No network"
is simulated without touching one: ``$COMPATKIT_DOWNLOAD_MIRROR`` points the download at a
``file://`` folder that does not exist, or at a local port nothing listens on.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from compatkit.config import load_config
from compatkit.data import CifarFormatError, UnsafePickleError, load_dataset
from compatkit.data.cifar import CIFAR_LAYOUTS, load_cifar, restricted_loads
from compatkit.data.download import MIRROR_ENV
from compatkit.data.folder import ImageFolderError
from compatkit.data.missing import DatasetNotFoundError
from compatkit.errors import DataError
from compatkit.protocol.plan import make_plan
from tests.data.formats import write_cifar_batch

from ..commands.cli import TINY

REPO = Path(__file__).resolve().parents[2]


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    src = str(REPO / "src")
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    full["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "compatkit", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# ----------------------------------------------------------------------------- downloads


@pytest.mark.parametrize(
    ("mirror", "reason"),
    [("file:///nonexistent-compatkit-mirror", "No such file"), ("http://127.0.0.1:9", "refused")],
)
def test_failed_download_says_searched_why_and_remedies(tmp_path, monkeypatch, mirror, reason):
    monkeypatch.setenv(MIRROR_ENV, mirror)
    empty = tmp_path / "fm"
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("fashion-mnist", root=empty, download=True)
    msg = str(e.value)
    assert f"the root argument ({empty})" in msg  # what was searched
    assert "the download failed: " in msg and "train-images-idx3-ubyte.gz" in msg
    assert reason in msg
    assert "`apt-get install dataset-fashion-mnist`" in msg
    assert "`export COMPATKIT_FASHION_MNIST=DIR`" in msg
    assert "\n" not in msg
    assert not list(empty.glob("*"))  # no partial download left behind
    assert isinstance(e.value, DataError) and isinstance(e.value, FileNotFoundError)


def test_default_config_without_network_is_one_line_with_cli_remedies(tmp_path):
    """The README's first command, `compatkit run`, on a machine with no data and no network."""
    empty = tmp_path / "fm"
    empty.mkdir()
    r = _cli(
        ["run", "--out", str(tmp_path / "run")],
        {"COMPATKIT_FASHION_MNIST": str(empty), MIRROR_ENV: (tmp_path / "nowhere").as_uri()},
        cwd=REPO,
    )
    line = _one_line(r)
    assert line.startswith("compatkit run: error: local.data: Fashion-MNIST (train) not found")
    assert f"$COMPATKIT_FASHION_MNIST ({empty})" in line
    assert "the download failed: file://" in line
    for remedy in (
        "`apt-get install dataset-fashion-mnist`",
        "`--set local.data.root=DIR`",
        "`export COMPATKIT_FASHION_MNIST=DIR`",
    ):
        assert remedy in line


def test_cifar_config_without_network_names_its_key(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, (tmp_path / "nowhere").as_uri())
    monkeypatch.setenv("COMPATKIT_CIFAR100", str(tmp_path / "c100"))
    cfg = load_config(REPO / "configs" / "cifar100_7tasks.yaml")
    with pytest.raises(DatasetNotFoundError) as e:
        make_plan(cfg)
    msg = str(e.value)
    assert msg.startswith("local.data: CIFAR-100 not found")
    assert "the download failed: file://" in msg and "cifar-100-python.tar.gz" in msg
    assert "`--set local.data.root=DIR`" in msg and "`export COMPATKIT_CIFAR100=DIR`" in msg


def test_missing_data_without_download_suggests_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"pass download=True") as e:
        load_dataset("cifar10", root=tmp_path / "none")
    assert "download failed" not in str(e.value)
    assert "`--set eval.query.download=true`" in str(e.value.for_key("eval.query"))


# ----------------------------------------------------------------------------- CIFAR


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo compromised > compromised.txt",))


def _cifar10(folder: Path, labels=None) -> Path:
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    (d / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2)
    )
    x = np.arange(20 * 3072, dtype=np.int64).reshape(20, 3, 32, 32).astype(np.uint8)
    y = np.arange(20) % 10 if labels is None else labels
    for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(d / b, x, y)
    return d


def test_write_cifar_batch_round_trip_with_numpy_labels(tmp_path):
    """The writer used to pickle numpy integer scalars (``list(np.array)``), which the
    restricted unpickler refuses; the official files hold Python ints."""
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4])
    d = _cifar10(tmp_path, labels=labels)
    raw = restricted_loads((d / "data_batch_1").read_bytes())
    assert raw[b"labels"] == labels.tolist() and all(type(v) is int for v in raw[b"labels"])
    s = load_cifar(CIFAR_LAYOUTS["cifar10"], tmp_path, "train")
    assert s.labels.tolist() == labels.tolist() * 5
    x = np.arange(20 * 3072, dtype=np.int64).reshape(20, 3, 32, 32).astype(np.uint8)
    assert torch.equal(s.images[:20], torch.from_numpy(x))
    with pytest.raises(CifarFormatError, match="3 images but 2 labels"):
        write_cifar_batch(tmp_path / "x", np.zeros((3, 3, 32, 32), np.uint8), [1, 2])


def test_malicious_cifar_pickle_is_one_line(tmp_path, fake_fashion):
    d = _cifar10(tmp_path / "data")
    (d / "data_batch_2").write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"data_batch_2: refusing to load global posix"):
        load_dataset("cifar10", root=tmp_path / "data")
    tiny = yaml.safe_load(TINY.read_text())
    tiny["local"]["data"] = {"dataset": "cifar10", "root": str(tmp_path / "data")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = _cli(
        ["run", str(cfg), "--out", str(tmp_path / "run")],
        {"COMPATKIT_FASHION_MNIST": str(fake_fashion)},
        cwd=tmp_path,
    )
    line = _one_line(r)
    assert "data_batch_2: refusing to load global posix.system" in line
    assert not (tmp_path / "compromised.txt").exists()


def test_damaged_cifar_archive_is_a_data_error(tmp_path):
    arch = tmp_path / "cifar-10-python.tar.gz"
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        info.size = 10_000
        tar.addfile(info, io.BytesIO(bytes(10_000)))
    arch.write_bytes(gzip.compress(buf.getvalue())[:-200])  # cut inside the stream
    with pytest.raises(CifarFormatError, match=rf"{arch}: (damaged archive|not a readable tar)"):
        load_dataset("cifar10", root=tmp_path)


# ----------------------------------------------------------------------------- images


def _png_folder(root: Path) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def _bomb(p: Path, side: int = 20_000) -> None:
    """A valid 1-bit PNG claiming side x side pixels, its data a few kilobytes of zlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\x00" + bytes((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    p.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("defect", "needle"),
    [
        ("empty", "not a readable image"),
        ("truncated", "not a readable image"),
        ("text", "not a readable image"),
        ("bomb", "refused, a decompression bomb"),
        ("bomb_warning", "refused, a decompression bomb"),
    ],
)
def test_broken_image_file_is_one_data_error_naming_it(tmp_path, defect, needle):
    root = _png_folder(tmp_path / "imgs")
    bad = root / "b" / "1.png"
    if defect == "empty":
        bad.write_bytes(b"")
    elif defect == "truncated":
        bad.write_bytes(bad.read_bytes()[:45])
    elif defect == "text":
        bad.write_text("this is not an image")
    elif defect == "bomb":
        _bomb(bad, 20_000)  # 400 Mpixel: above twice Pillow's limit, an error there
    else:
        _bomb(bad, 10_000)  # 100 Mpixel: above the limit, only a warning in Pillow
    with pytest.raises(ImageFolderError) as e:
        load_dataset("folder", root=root)
    assert str(e.value).startswith(f"{bad}: {needle}")
    assert "\n" not in str(e.value)


def test_broken_image_through_the_cli(tmp_path, fake_fashion):
    root = _png_folder(tmp_path / "imgs")
    (root / "a" / "2.png").write_bytes(b"")
    tiny = yaml.safe_load(TINY.read_text())
    tiny["local"]["data"] = {"dataset": "folder", "root": str(root)}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    r = _cli(
        ["run", str(cfg), "--out", str(tmp_path / "run")],
        {"COMPATKIT_FASHION_MNIST": str(fake_fashion)},
        cwd=tmp_path,
    )
    assert f"{root / 'a' / '2.png'}: not a readable image" in _one_line(r)


def test_idx_header_whose_size_overflows_int64(tmp_path):
    """2^31 x 2^31 x 2^31 bytes wrapped to 0 in int64, so a 16-byte file passed the size check
    and failed in numpy's reshape (an internal error); the exact size refuses it."""
    from compatkit.data import IdxFormatError, read_idx

    p = tmp_path / "huge-idx3-ubyte"
    p.write_bytes(struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 2**31, 2**31, 2**31))
    with pytest.raises(IdxFormatError, match=rf"{p}: truncated: header says shape"):
        read_idx(p)
