"""IDX format: exact round trips from hand-written headers, refusal of damaged files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from compatkit.data import IdxFormatError, read_idx, write_idx


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file built by hand from the format description (independent of write_idx)."""
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload


def test_reads_gzipped_ubyte_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (5, 3, 4), images.tobytes())))
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 3, 4)
    np.testing.assert_array_equal(out, images)


def test_reads_plain_file_and_bigendian_types(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    plain = tmp_path / "labels-idx1-ubyte"  # not gzipped, detected by content
    plain.write_bytes(idx_bytes(0x08, (5,), labels.tobytes()))
    np.testing.assert_array_equal(read_idx(plain), labels)

    ints = np.array([[1, -2], [70000, -70000]], dtype=">i4")
    p = tmp_path / "ints"
    p.write_bytes(idx_bytes(0x0C, (2, 2), ints.tobytes()))
    got = read_idx(p)
    assert got.dtype == np.int32 and got.dtype.isnative
    assert got.tolist() == [[1, -2], [70000, -70000]]

    floats = np.array([0.5, -1.25], dtype=">f8")
    p = tmp_path / "floats.gz"
    p.write_bytes(gzip.compress(idx_bytes(0x0E, (2,), floats.tobytes())))
    assert read_idx(p).tolist() == [0.5, -1.25]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.gz", "a"])
def test_write_idx_round_trip(tmp_path: Path, dtype, name: str) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, arr)
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    np.testing.assert_array_equal(read_idx(tmp_path / name), arr)


def test_refuses_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_bytes(b"\x00\x01\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")  # unknown dtype code
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(p)


def test_refuses_truncated_and_padded(tmp_path: Path) -> None:
    good = idx_bytes(0x08, (4, 2, 2), bytes(16))
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(good[:-1]))
    with pytest.raises(IdxFormatError, match="truncated"):
        read_idx(p)
    p.write_bytes(gzip.compress(good + b"\x00"))
    with pytest.raises(IdxFormatError, match="trailing"):
        read_idx(p)
    p.write_bytes(gzip.compress(good[:9]))  # header cut inside the dims
    with pytest.raises(IdxFormatError, match="header"):
        read_idx(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(IdxFormatError, match="too short"):
        read_idx(p)


def test_refuses_truncated_gzip_stream(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(0x08, (100,), bytes(range(100))))
    p = tmp_path / "cut.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxFormatError, match="damaged gzip"):
        read_idx(p)
