"""The IDX file format of MNIST and Fashion-MNIST.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/, "FILE FORMATS"): a
4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the values, big-endian, row-major. The distributed
files are gzip-compressed; both forms are read (the gzip form is recognised by
its own magic bytes, not by the file name).

The header is checked against the file size, so a truncated or padded file is
refused with a message that names it instead of producing a wrongly shaped
array or garbage images.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..runtime.files import atomic_write_bytes

__all__ = ["IDX_DTYPES", "IdxFormatError", "read_idx", "write_idx"]

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX dtype code -> big-endian numpy dtype."""

_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(DataError):
    """A file is not a well-formed IDX file."""


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:  # truncated stream, bad CRC, bad block
        raise IdxFormatError(f"{path}: damaged gzip stream ({e}); download the file again") from e


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a native-endian numpy array."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in IDX_DTYPES:
        raise IdxFormatError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000 followed by a "
            f"dtype code in {[hex(c) for c in IDX_DTYPES]} and the number of dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated IDX header (needs {header} bytes for {ndim} dims)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    expected = header + math.prod(dims) * dtype.itemsize  # exact: int64 would wrap
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{path}: {what}: header says shape {dims} of {dtype.str} ({expected} bytes with the "
            f"header), the file has {len(raw)} bytes"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(
    path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None
) -> None:
    """Write ``array`` as an IDX file (gzipped when ``compress``, default: name ends in .gz).

    Used by tests and for exporting small subsets in the same format as the originals.
    """
    path = Path(path)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise TypeError(f"IDX cannot store dtype {array.dtype}")
    code = codes[native]
    payload = struct.pack(">HBB", 0, code, array.ndim)
    payload += struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    atomic_write_bytes(path, gzip.compress(payload) if compress else payload)
