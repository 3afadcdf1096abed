"""Read a ``torch.save`` file without executing anything it names.

``torch.load(weights_only=True)`` refuses the authors' released model files:
next to the weights they hold an ``args`` object of the authors' own class
(``iamcl2r.params.ExperimentParams``), which does not exist here. Plain
``pickle`` or ``torch.load(weights_only=False)`` would import and call
whatever the file names, so a doctored file could run any code.

This reader parses the archive itself. ``torch.save`` (PyTorch >= 1.6) writes
a zip file: ``<name>/data.pkl`` is a pickle whose tensors refer, through
persistent ids ``("storage", <dtype class>, key, location, numel)``, to raw
little-endian bytes in ``<name>/data/<key>``. The unpickler answers every
global the pickle names from a fixed table:

- rebuilt by functions of this module: tensors (``torch._utils._rebuild_tensor_v2``
  and kin, always on the CPU), storages (their dtype only), ``torch.Size``,
  dtypes and devices (as inert values);
- numpy arrays and scalars, builtin containers, ``collections.OrderedDict`` and
  ``defaultdict`` (the project's CIFAR allow-list, plus these);
- instances of the authors' classes (module ``iamcl2r`` and below) and of
  ``argparse.Namespace``: :class:`InertObject` records of their name, arguments
  and state; no method of theirs is looked up or called;
- anything else, ``os.system``, ``builtins.eval``, ``subprocess.Popen``, any
  other class or function, is refused before the pickle can call it, with a
  :class:`~compatkit.errors.CheckpointError` naming the file and the global.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..data.cifar import safe_numpy_globals
from ..errors import CheckpointError

__all__ = ["INERT_MODULES", "InertObject", "read_torch_file"]

INERT_MODULES = ("iamcl2r",)
"""Packages whose classes become :class:`InertObject` (with their sub-modules)."""
_INERT_GLOBALS = {("argparse", "Namespace"), ("types", "SimpleNamespace")}

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}
_DTYPE_NAMES = (
    "float32 float64 float16 bfloat16 int64 int32 int16 int8 uint8 bool "
    "float double half long int short"
).split()


class InertObject:
    """An instance of a class that is not loaded, kept as data: its name, arguments and state.

    The unpickler hands a subclass of this to the pickle in place of the authors' class,
    so building the instance (``NEWOBJ``, ``REDUCE``, ``BUILD``) only records values.
    """

    __module_name__ = ""
    __class_name__ = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = super().__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    @property
    def qualname(self) -> str:
        return f"{self.__module_name__}.{self.__class_name__}"

    def fields(self) -> dict[str, Any]:
        """The instance's attributes as pickled (``__dict__``, or the dict half of a
        ``(dict, slots)`` state); empty when the state is something else."""
        st = self.state
        if isinstance(st, tuple) and len(st) == 2 and isinstance(st[0], dict | type(None)):
            st = {**(st[0] or {}), **(st[1] or {})}
        return dict(st) if isinstance(st, dict) else {}

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


def _inert_class(module: str, name: str) -> type[InertObject]:
    attrs = {"__module_name__": module, "__class_name__": name}
    return type(f"Inert_{name}", (InertObject,), attrs)


class _StorageType:
    """What a pickled storage class (``torch.FloatStorage``, ...) stands for: its dtype."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2``'s job on a CPU buffer: a strided view, bounds
    checked by ``as_strided`` against the storage actually read."""
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError(f"a tensor refers to {type(storage).__name__}, not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min((*size, *stride, int(offset), 0)) < 0:
        raise pickle.UnpicklingError(f"bad tensor geometry size={size} stride={stride}")
    extent = int(offset) + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
    if all(size) and extent > storage.numel():
        raise pickle.UnpicklingError(
            f"a tensor of size {size} reaches element {extent} of a storage of {storage.numel()}"
        )
    return torch.as_strided(storage, size, stride, int(offset))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data  # an nn.Parameter is read as the plain tensor it wraps


def _allowed() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = dict(safe_numpy_globals())
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "scalar")] = scalar
    table[("collections", "OrderedDict")] = collections.OrderedDict
    table[("collections", "defaultdict")] = collections.defaultdict
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
        table[("torch._utils", name)] = _rebuild_tensor
    for name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        table[("torch._utils", name)] = _rebuild_parameter
    for name, dtype in _STORAGE_DTYPES.items():
        table[("torch", name)] = _StorageType(name, dtype)
    for name in _DTYPE_NAMES:
        table[("torch", name)] = getattr(torch, name)
    table[("torch", "Size")] = tuple
    table[("torch", "device")] = lambda *a: "device:" + ":".join(str(x) for x in a)
    return table


_ALLOWED = _allowed()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        top = module.split(".", 1)[0]
        if top in INERT_MODULES or (module, name) in _INERT_GLOBALS:
            return _inert_class(module, name)
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"storage of unknown type {kind!r}")
        key = str(key)
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}/data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
            itemsize = torch.empty((), dtype=kind.dtype).element_size()
            if len(raw) < int(numel) * itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key} holds {len(raw)} bytes, {int(numel) * itemsize} expected"
                )
            n = int(numel)
            buf = bytearray(raw[: n * itemsize])
            t = torch.frombuffer(buf, dtype=kind.dtype) if n else torch.empty(0, dtype=kind.dtype)
            self.storages[key] = t
        return self.storages[key]


class _Refused(Exception):
    """A global outside the allow-list (kept apart from errors of the data itself)."""


def read_torch_file(path: str | os.PathLike) -> Any:
    """The object a ``torch.save`` zip file holds, rebuilt from tensors and plain data only.

    Tensors come back on the CPU; instances of the authors' classes as
    :class:`InertObject`. Raises :class:`CheckpointError` (one line naming ``path``)
    for a missing file, a file that is not a ``torch.save`` zip archive, a global
    outside the allow-list, or a malformed archive.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(
            f"{p}: not a torch.save zip archive (PyTorch >= 1.6); a legacy or other format "
            "is not read"
        )
    try:
        with zipfile.ZipFile(p) as z:
            pkls = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise CheckpointError(f"{p}: a zip file, but not one written by torch.save")
            prefix = pkls[0].rsplit("/", 1)[0]
            order = f"{prefix}/byteorder"
            if order in z.namelist() and z.read(order).strip() != b"little":
                raise CheckpointError(f"{p}: written on a big-endian machine; not supported")
            return _Unpickler(z.read(pkls[0]), z, prefix).load()
    except CheckpointError:
        raise
    except _Refused as e:
        raise CheckpointError(
            f"{p}: refusing to load global {e}: this reader rebuilds only tensors, plain data "
            "and the authors' argument objects, and the file names something that could run "
            "code (it may be malicious)"
        ) from None
    except Exception as e:  # a malformed pickle or archive, whatever the parser raised
        cause = " ".join(str(e).split())[:160]
        raise CheckpointError(
            f"{p}: cannot be read, the file is truncated or corrupt ({type(e).__name__}: {cause})"
        ) from None
