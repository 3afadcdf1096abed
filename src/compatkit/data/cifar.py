"""CIFAR-10 and CIFAR-100 in their official "python version" format.

Format (Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html): each batch
file is a pickled dict with bytes keys; ``b"data"`` is a ``uint8`` array of
shape ``(N, 3072)`` whose rows hold the red, green and blue 32x32 planes in
that order, row-major; labels are ``b"labels"`` (CIFAR-10) or ``b"fine_labels"``
(CIFAR-100). Class names are in ``batches.meta`` (``b"label_names"``) and
``meta`` (``b"fine_label_names"``).

Pickle is the only way to read this format, and unpickling an arbitrary file
can run arbitrary code. :class:`RestrictedUnpickler` therefore resolves only
the handful of globals a numpy array needs and refuses every other one, so a
downloaded file cannot execute anything while being read.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .imageset import ImageSet

__all__ = [
    "CIFAR_LAYOUTS",
    "CifarFormatError",
    "CifarLayout",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "find_cifar",
    "load_cifar",
    "restricted_loads",
    "safe_numpy_globals",
]


class CifarFormatError(DataError):
    """A CIFAR batch file does not have the expected content."""


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle names a global outside the allow-list (it could run code): refused."""


def safe_numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name (numpy arrays, builtin containers), resolved
    without importing by name; also the base of the torch-file reader's allow-list.

    Numpy moved ``numpy.core`` to ``numpy._core`` in 2.0; files written with either
    name map to the function of the installed numpy (and never trigger an import).
    """
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    import codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles of bytes at protocol <= 2 go through codecs.encode(str, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        # numpy's reduction of arrays at pickle protocol 5
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    # Plain containers (Python 2 pickles name them through __builtin__).
    for mod in ("builtins", "__builtin__"):
        for name, obj in (
            ("list", list),
            ("dict", dict),
            ("tuple", tuple),
            ("set", set),
            ("frozenset", frozenset),
            ("bytearray", bytearray),
        ):
            allowed[(mod, name)] = obj
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and builtin containers, and nothing else.

    ``find_class`` is the only way a pickle reaches a callable; answering it from a fixed
    table (instead of importing ``module.name``) means ``os.system``, ``eval``,
    ``subprocess`` and friends are refused before they exist in the stream's hands.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = safe_numpy_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: a CIFAR data file only contains "
                "numpy arrays, lists and dicts (this file may be malicious)"
            ) from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    ``encoding="bytes"`` reads the Python 2 strings of the official files as ``bytes``
    (hence the bytes keys) instead of guessing a text encoding for binary data.
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


class CifarLayout:
    """Where the files of one CIFAR variant are and which keys they use."""

    def __init__(
        self,
        name: str,
        folder: str,
        archive: str,
        url: str,
        md5: str,
        train_files: list[str],
        test_files: list[str],
        meta_file: str,
        names_key: bytes,
        labels_key: bytes,
    ) -> None:
        self.name = name
        self.folder = folder
        self.archive = archive
        self.url = url
        self.md5 = md5
        self.train_files = train_files
        self.test_files = test_files
        self.meta_file = meta_file
        self.names_key = names_key
        self.labels_key = labels_key

    def files(self, split: str) -> list[str]:
        return self.train_files if split == "train" else self.test_files


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        name="CIFAR-10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_files=["test_batch"],
        meta_file="batches.meta",
        names_key=b"label_names",
        labels_key=b"labels",
    ),
    "cifar100": CifarLayout(
        name="CIFAR-100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=["train"],
        test_files=["test"],
        meta_file="meta",
        names_key=b"fine_label_names",
        labels_key=b"fine_labels",
    ),
}

_Reader = Callable[[list[str]], dict[str, bytes]]


def find_cifar(layout: CifarLayout, root: Path) -> tuple[str, _Reader] | None:
    """Locate the data under ``root``; return (description, reader of named members) or None.

    Accepted, in this order: ``root`` is the extracted folder; ``root`` contains it;
    ``root`` is the ``.tar.gz`` archive; ``root`` contains the archive. Archive members
    are read straight from the tar file, so nothing is extracted or written.
    """
    for folder in (root, root / layout.folder):
        if folder.is_dir() and (folder / layout.meta_file).is_file():
            return str(folder), lambda members, folder=folder: _read_files(folder, members)
    for archive in (root, root / layout.archive):
        if not archive.is_file():
            continue
        try:
            is_tar = tarfile.is_tarfile(archive)
        except (OSError, EOFError, zlib.error):
            is_tar = False
        if is_tar:
            return str(archive), lambda members, archive=archive: _read_tar_members(
                archive, layout.folder, members
            )
        if archive.name == layout.archive:  # the file is there, under its own name: damaged
            raise CifarFormatError(
                f"{archive}: not a readable tar archive (a truncated or damaged download?); "
                "delete it and download it again"
            )
    return None


def _read_files(folder: Path, members: list[str]) -> dict[str, bytes]:
    out = {}
    for m in members:
        if not (folder / m).is_file():
            raise CifarFormatError(f"{folder}: missing file {m!r}")
        try:
            out[m] = (folder / m).read_bytes()
        except OSError as e:
            raise CifarFormatError(f"{folder / m}: cannot be read ({e.strerror or e})") from None
    return out


def _read_tar_members(archive: Path, folder: str, members: list[str]) -> dict[str, bytes]:
    """Read ``folder/<member>`` for each member in one sequential pass over the archive
    (a gzipped tar has no index: a lookup per member would decompress it once per member)."""
    wanted = {f"{folder}/{m}": m for m in members}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                if info.name in wanted and info.isfile():
                    f = tar.extractfile(info)
                    if f is not None:
                        with f:
                            out[wanted[info.name]] = f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # truncated or damaged
        raise CifarFormatError(
            f"{archive}: damaged archive ({type(e).__name__}: {e}); download it again"
        ) from None
    missing = [m for m in members if m not in out]
    if missing:
        raise CifarFormatError(f"{archive}: missing file(s) {missing} under {folder}/")
    return out


def _load_pickle(raw: bytes, member: str, where: str) -> dict:
    try:
        obj = restricted_loads(raw)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}/{member}: {e}") from None
    except Exception as e:  # truncated stream, garbage bytes
        cause = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise CifarFormatError(f"{where}/{member}: not a readable CIFAR pickle ({cause})") from e
    if not isinstance(obj, dict):
        raise CifarFormatError(f"{where}/{member}: expected a dict, got {type(obj).__name__}")
    return obj


def load_cifar(layout: CifarLayout, root: Path, split: str) -> ImageSet:
    """Load one split of a CIFAR variant from ``root`` (see :func:`find_cifar`)."""
    found = find_cifar(layout, root)
    if found is None:
        raise CifarFormatError(f"{root}: no {layout.name} files found")
    where, read = found
    blobs = read([layout.meta_file, *layout.files(split)])
    meta = _load_pickle(blobs.pop(layout.meta_file), layout.meta_file, where)
    if layout.names_key not in meta:
        raise CifarFormatError(f"{where}/{layout.meta_file}: no {layout.names_key!r} entry")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key]]

    images, labels = [], []
    for member in layout.files(split):
        batch = _load_pickle(blobs.pop(member), member, where)
        for key in (b"data", layout.labels_key):
            if key not in batch:
                raise CifarFormatError(f"{where}/{member}: no {key!r} entry")
        data = np.asarray(batch[b"data"])
        try:
            lab = np.asarray(batch[layout.labels_key], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise CifarFormatError(
                f"{where}/{member}: {layout.labels_key!r} is not a list of integers"
            ) from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise CifarFormatError(
                f"{where}/{member}: data must be uint8 of shape (N, 3072), got "
                f"{data.dtype} {data.shape}"
            )
        if lab.shape != (data.shape[0],):
            raise CifarFormatError(
                f"{where}/{member}: {data.shape[0]} images but {lab.shape} labels"
            )
        if lab.size and (lab.min() < 0 or lab.max() >= len(classes)):
            raise CifarFormatError(
                f"{where}/{member}: labels outside [0, {len(classes)}) of the class names"
            )
        # Rows are R, G, B planes of 32x32 row-major: exactly the (C, H, W) order.
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(lab))
    return ImageSet(torch.cat(images), torch.cat(labels), classes)
