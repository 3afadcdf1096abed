"""Reading torch files without running them: ``weights_only=True``, and a refusal that names
what a pickle would have imported.

A ``.pt`` file is a pickle; unpickling one can run arbitrary code. compatkit reads every
torch file with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers, and when that fails it tells a damaged file from a hostile one by decoding the
pickle's opcodes (:func:`foreign_imports`, which executes nothing): a file whose pickle
imports ``os.system`` or a class is refused as such, never reported as merely corrupt.
"""

from __future__ import annotations

import io
import os
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = ["foreign_imports", "name_list", "safe_torch_load"]


def name_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# Names a compatkit checkpoint's pickle may import: torch's tensor rebuilders and containers.
_SAFE_MODULES = ("torch", "collections", "_codecs", "builtins")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
               "BINSTRING", "SHORT_BINSTRING"}  # fmt: skip


_MAX_SCAN = 64 << 20  # bytes of pickle scanned for imports: a checkpoint's pickle is kilobytes


def _pickle_streams(p: Path) -> list[bytes]:
    """The pickle(s) of a torch file: ``*/data.pkl`` of the zip format, or the whole file."""
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                return [
                    z.read(i)
                    for i in z.infolist()
                    if i.filename.endswith(".pkl") and i.file_size <= _MAX_SCAN
                ]
        with open(p, "rb") as f:
            return [f.read(_MAX_SCAN)]
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []


def foreign_imports(p: Path) -> list[str]:
    """Globals outside torch and plain containers that the file's pickle would import.

    Read with ``pickletools.genops``, which decodes opcodes and executes nothing. A stream
    that stops early (truncated) yields what was decoded before the damage.
    """
    found: list[str] = []
    for raw in _pickle_streams(p):
        stream = io.BytesIO(raw)
        strings: list[str] = []
        # The legacy (non-zip) format is several pickles in a row, then raw storage bytes.
        for _ in range(8):
            start = stream.tell()
            try:
                for op, arg, _ in pickletools.genops(stream):
                    if op.name in _STRING_OPS and isinstance(arg, str | bytes):
                        strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
                        continue
                    if op.name in ("GLOBAL", "INST"):
                        name = str(arg).replace(" ", ".", 1)
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        name = f"{strings[-2]}.{strings[-1]}"
                    else:
                        continue
                    if not name.startswith(tuple(m + "." for m in _SAFE_MODULES)):
                        found.append(name)
            except Exception:  # damaged stream: keep what was decoded before the damage
                break
            if stream.tell() in (start, len(raw)):
                break
    return found


def _load_error(p: Path, e: Exception, what: str = "checkpoint") -> CheckpointError:
    """One line for a ``torch.load(weights_only=True)`` failure: refused or damaged.

    Refused means the pickle asks to import something other than torch's tensor rebuilders
    and plain containers (``os.system``, ``builtins.eval``, a class to build): the file may
    be well formed, and it was written to run code when loaded.
    """
    foreign = foreign_imports(p)
    if foreign:
        return CheckpointError(
            f"{what} {p}: refusing to unpickle it: it imports {name_list(sorted(set(foreign)), 3)}"
            ", not only tensors and plain containers, and loading it could run arbitrary code"
        )
    msg = str(e)
    if "WeightsUnpickler error:" in msg:  # torch wraps the cause in a long help text
        msg = msg.split("WeightsUnpickler error:", 1)[1]
    msg = msg.split("Check the documentation")[0]
    if "Weights only load failed" in msg:  # the cause is on the lines after torch's preamble
        msg = msg.split("\n\n", 1)[-1]
    cause = " ".join(msg.split()).split(". ")[0].rstrip(".")[:200] or "no details"
    return CheckpointError(
        f"{what} {p}: cannot be read, the file is truncated or corrupt "
        f"({type(e).__name__}: {cause})"
    )


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` on the CPU; every failure is one CheckpointError line.

    ``what`` names the kind of file in the message ("checkpoint", "memory file"). A file
    whose pickle imports anything but tensors and plain containers is refused as such (see
    :func:`_load_error`), never reported as damaged.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{what} {p}: no such file")
    if not p.is_file():
        raise CheckpointError(f"{what} {p}: not a regular file")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of foreign files: the error says more.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _load_error(p, e, what) from None
