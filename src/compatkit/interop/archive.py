"""Inspect TorchScript and ``torch.export`` archives before anything loads them.

Both formats are zip files that carry pickles: TorchScript's ``data.pkl``,
``constants.pkl`` and ``code/**.debug_pkl``; a ``.pt2``'s pickled weights, constants and
sample inputs (``torch.save`` archives nested in the outer zip, which ``torch.export.load``
reads with ``weights_only=False``, and ``pickle.loads`` for opaque objects). A pickle runs
whatever callable it names, so a model file from elsewhere is refused, in one line naming
the file and what it carries, unless every global each pickle imports is one the format
needs to rebuild tensors (and, for TorchScript, its own ``__torch__`` classes, which
TorchScript resolves from the archive's compiled code, never from Python modules).

The scan decodes opcodes with :func:`pickletools.genops`, which executes nothing, and
follows the stack only as far as it can prove: ``STACK_GLOBAL`` is accepted only right
after two pushes of known strings (directly or from the memo), ``EXT*`` opcodes (globals by
registry number) are refused, and so is a pickle that cannot be decoded to its end. Compiled
code (``data/aotinductor``, shared libraries) and torchbind or opaque objects in a ``.pt2``
are refused as well: an embedding network needs none of them.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path

from ..errors import CheckpointError

__all__ = [
    "TENSOR_GLOBALS",
    "TORCHSCRIPT_GLOBALS",
    "pickle_globals",
    "scan_pt2",
    "scan_torchscript",
]

_STORAGES = ("Float Double Half BFloat16 Long Int Short Char Byte Bool Untyped").split()
TENSOR_GLOBALS = frozenset(
    {
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("collections", "OrderedDict"),
        ("torch", "Size"),
        ("torch", "device"),
    }
    | {("torch", f"{s}Storage") for s in _STORAGES}
)
"""What a pickle of tensors and containers imports (``torch.save`` of a state dict)."""
TORCHSCRIPT_GLOBALS = TENSOR_GLOBALS | {
    ("torch.jit._pickle", n)
    for n in (
        "build_intlist",
        "build_tensorlist",
        "build_doublelist",
        "build_boollist",
        "build_tensor_from_id",
        "restore_type_tag",
    )
}
_TS_CLASSES = "__torch__."  # TorchScript's own classes, compiled from the archive's code/
_MAX_PICKLE = 64 << 20  # bytes: a model's pickle is kilobytes (tensors are stored apart)
_STRINGS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


class _Unsafe(Exception):
    """What a pickle would import or do that is not allowed (the message says what)."""


def pickle_globals(raw: bytes) -> list[str]:
    """Every global ``module.name`` the pickle imports, in order; raises :class:`_Unsafe`
    for a construct the scan cannot follow (``EXT*``, an untraceable ``STACK_GLOBAL``, a
    stream that does not decode to its ``STOP``)."""
    found: list[str] = []
    recent: list[str | None] = []  # the last values pushed (None: not a known string)
    memo: dict[int, str | None] = {}
    stopped = False
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(raw)):
            name = op.name
            if name in _STRINGS:
                recent.append(arg if isinstance(arg, str) else bytes(arg).decode("latin-1"))
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in _PUTS:
                memo[int(arg)] = recent[-1] if recent else None
            elif name in _GETS:
                recent.append(memo.get(int(arg)))
            elif name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", ".", 1))
                recent.append(None)
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or recent[-1] is None or recent[-2] is None:
                    raise _Unsafe("a STACK_GLOBAL whose names the scan cannot follow")
                found.append(f"{recent[-2]}.{recent[-1]}")
                recent.append(None)
            elif name.startswith("EXT"):
                raise _Unsafe(f"an {name} opcode (a global by registry number)")
            elif name == "STOP":
                stopped = True
            elif name not in ("PROTO", "FRAME"):
                recent.append(None)
            del recent[:-2]
    except _Unsafe:
        raise
    except Exception as e:  # genops on damaged bytes
        raise _Unsafe(f"a pickle that does not decode ({type(e).__name__}: {e})") from None
    if not stopped:
        raise _Unsafe("a pickle that does not end")
    return found


def _check(raw: bytes, where: str, allowed: frozenset, ts_classes: bool) -> None:
    if len(raw) > _MAX_PICKLE:
        raise _Unsafe(f"{where}: a pickle of {len(raw)} bytes, too large to inspect")
    try:
        names = pickle_globals(raw)
    except _Unsafe as e:
        raise _Unsafe(f"{where}: {e}") from None
    for n in names:
        module, _, attr = n.rpartition(".")
        if (module, attr) in allowed or (ts_classes and n.startswith(_TS_CLASSES)):
            continue
        raise _Unsafe(f"{where} imports {n}")


def _refuse(p: Path, kind: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"{p}: refusing to load this {kind}: {why}, which the format does not need and which "
        "could run code (the file may be malicious)"
    )


def _open(p: Path, kind: str) -> zipfile.ZipFile:
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(f"{p}: not a {kind} (not a zip archive)")
    try:
        return zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{p}: a damaged {kind} ({e})") from None


def scan_torchscript(path: str | Path) -> None:
    """Refuse a TorchScript archive whose pickles import more than tensors, containers and
    its own TorchScript classes; returns when the archive is safe to hand to
    ``torch.jit.load``."""
    p = Path(path)
    with _open(p, "TorchScript archive") as z:
        names = z.namelist()
        if not any(n.endswith("/constants.pkl") for n in names):
            raise CheckpointError(f"{p}: not a TorchScript archive (no constants.pkl)")
        try:
            for info in z.infolist():
                if info.filename.endswith((".pkl", ".debug_pkl")):
                    if info.file_size > _MAX_PICKLE:
                        raise _Unsafe(f"{info.filename}: a pickle too large to inspect")
                    _check(z.read(info), info.filename, TORCHSCRIPT_GLOBALS, ts_classes=True)
        except _Unsafe as e:
            raise _refuse(p, "TorchScript archive", str(e)) from None


def _nested_pickles(raw: bytes, where: str) -> list[tuple[str, bytes]]:
    """The pickles inside one member: those of a nested ``torch.save`` zip, or the member
    itself when it starts like a pickle."""
    if raw[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(raw)) as inner:
            out = []
            for i in inner.infolist():
                if i.filename.endswith(".pkl"):
                    if i.file_size > _MAX_PICKLE:
                        raise _Unsafe(f"{where}/{i.filename}: a pickle too large to inspect")
                    out.append((f"{where}/{i.filename}", inner.read(i)))
            return out
    return [(where, raw)] if raw[:1] == b"\x80" else []


def _raw_payloads(z: zipfile.ZipFile) -> tuple[set[str], list[str]]:
    """Members the configs declare as raw tensor bytes (never unpickled), and the path names
    of constants that are objects rather than tensors."""
    raw, objects = set(), []
    for n in z.namelist():
        if n.endswith(("model_weights_config.json", "model_constants_config.json")):
            try:
                cfg = json.loads(z.read(n)).get("config", {})
            except (ValueError, AttributeError):
                raise _Unsafe(f"{n}: not a JSON object") from None
            folder = n.rsplit("/", 1)[0]
            for meta in cfg.values():
                path_name = str(meta.get("path_name", ""))
                if "constants" in n and not path_name.startswith("tensor_"):
                    objects.append(path_name)
                if not meta.get("use_pickle", False):
                    raw.add(f"{folder}/{path_name}")
    return raw, objects


def scan_pt2(path: str | Path) -> None:
    """Refuse a ``torch.export`` archive carrying compiled code, torchbind/opaque objects or
    a pickle that imports more than tensors and containers."""
    p = Path(path)
    with _open(p, "torch.export archive (.pt2)") as z:
        names = z.namelist()
        if not any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            raise CheckpointError(f"{p}: not a torch.export archive (no archive_format)")
        try:
            for n in names:
                low = n.lower()
                if "/aotinductor/" in low or low.endswith((".so", ".dll", ".dylib", ".pyd")):
                    raise _Unsafe(f"{n}: compiled code")
            raw, objects = _raw_payloads(z)
            if objects:
                raise _Unsafe(f"constants that are objects, not tensors ({objects[0]})")
            for info in z.infolist():
                if info.filename in raw or info.is_dir():
                    continue
                with z.open(info) as f:
                    head = f.read(4)
                if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
                    continue  # JSON, text or raw bytes: nothing that unpickles it
                for where, pk in _nested_pickles(z.read(info), info.filename):
                    _check(pk, where, TENSOR_GLOBALS, ts_classes=False)
        except _Unsafe as e:
            raise _refuse(p, "torch.export archive", str(e)) from None
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{p}: a damaged torch.export archive ({e})") from None
