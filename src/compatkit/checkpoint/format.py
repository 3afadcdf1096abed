"""Atomic, safe-to-load checkpoints that carry the model's compatibility contract.

Whether two models' features can be compared depends on more than weights:
the feature dimension, the head kind, K, the ETF seed and which head row
(simplex vertex) each class uses (Biondi et al., CVPR 2024, Sec. 3: the
d-Simplex vertices never move, so compatibility holds only while every
class keeps its vertex). A checkpoint therefore stores that contract next to
the state dict, and loading refuses, with a message naming the file and the
problem, anything it cannot vouch for.

File layout (``torch.save`` of one dict holding only tensors, str, int,
float, bool, None, lists and dicts, so ``torch.load(weights_only=True)``
reads it without unpickling arbitrary objects)::

    format            "compatkit-checkpoint"
    format_version    1
    compatkit_version the library version that wrote it
    contract          CompatModel.contract(): backbone, in_channels, feat_dim, head,
                      num_classes, etf_seed, junction, head_rows, class_map
    classes_seen      sorted local classes the model has been trained on
    extra             caller's JSON-able metadata (task id, seed, ...)
    state_dict        model.state_dict(), tensors on the CPU
    sha256            digest of the tensors and of every field above (tamper check)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickletools
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointError, IncompatibleModels
from ..model import CompatModel, ModelSpec, build_model
from ..simplex import ClassMap

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "IncompatibleModels",
    "ModelLike",
    "atomic_torch_save",
    "check_compatible",
    "content_digest",
    "file_sha256",
    "load_checkpoint",
    "read_contract",
    "safe_torch_load",
    "save_checkpoint",
    "state_dict_mismatch",
]

FORMAT = "compatkit-checkpoint"
FORMAT_VERSION = 1

_META_KEYS = ("format", "format_version", "compatkit_version", "contract", "classes_seen", "extra")
_REQUIRED = (*_META_KEYS, "state_dict", "sha256")
_FIXED_HEADS = ("simplex", "etf")
_CONTRACT_DEFAULTS = {"junction": True}
"""Contract fields added after format version 1 was fixed, with the value a checkpoint that
lacks them had: such files load, and compare, as the models they always were."""


# ----------------------------------------------------------------------------- hashing


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (for provenance records), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(meta: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the metadata (canonical JSON) and each tensor's name, dtype, shape, bytes."""
    return content_digest({k: meta[k] for k in _META_KEYS}, state_dict)


def content_digest(meta: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of JSON metadata and named tensors: the tamper and corruption check of every
    file compatkit writes with torch.save (checkpoints, rehearsal-memory files)."""
    h = hashlib.sha256()
    h.update(_canonical(meta))
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu").contiguous()
        h.update(_canonical([name, str(t.dtype), list(t.shape)]))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- saving


def _check_jsonable(obj: Any, where: str = "extra") -> Any:
    """Return a copy of ``obj`` made of JSON types only (tuples become lists), or raise."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, list | tuple):
        return [_check_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _check_jsonable(v, f"{where}[{k!r}]")
        return out
    raise ValueError(
        f"{where} is a {type(obj).__name__}; checkpoint metadata may only hold "
        "None, bool, int, float, str, lists and dicts with string keys"
    )


def _unwrap(model: Any) -> CompatModel:
    """Accept a DDP- or torch.compile-wrapped CompatModel as well."""
    seen = model
    for _ in range(4):
        if isinstance(seen, CompatModel):
            return seen
        seen = getattr(seen, "module", None) or getattr(seen, "_orig_mod", None)
        if seen is None:
            break
    raise TypeError(f"save_checkpoint needs a CompatModel, got {type(model).__name__}")


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); skipped where a directory cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, model: CompatModel, extra: dict | None = None) -> None:
    """Write ``model`` and its contract to ``path`` atomically.

    The payload goes to a temporary file in the same directory, is fsynced,
    then renamed over ``path`` with ``os.replace``: a crash or an error while
    saving leaves either the old file or the new one, never half of one, and
    no temporary file behind.
    """
    m = _unwrap(model)
    path = Path(path)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "compatkit_version": __version__,
        "contract": _check_jsonable(m.contract(), "contract"),
        "classes_seen": sorted(int(c) for c in m.class_map.local),
        "extra": _check_jsonable(extra if extra is not None else {}),
    }
    state = {k: v.detach().to("cpu") for k, v in m.state_dict().items()}
    payload = {**meta, "state_dict": state, "sha256": _digest(meta, state)}

    atomic_torch_save(payload, path)


def atomic_torch_save(payload: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, rename over ``path``.

    A crash or an error while saving leaves either the old file or the new one,
    never half of one, and no temporary file behind.
    """
    path = Path(path)
    if path.is_dir():  # os.replace would fail with a traceback after the whole save
        raise CheckpointError(f"{path}: is a directory, cannot write a file there")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# ----------------------------------------------------------------------------- loading


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


def _foreign_imports(p: Path) -> list[str]:
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
    foreign = _foreign_imports(p)
    if foreign:
        return CheckpointError(
            f"{what} {p}: refusing to unpickle it: it imports {_names(sorted(set(foreign)), 3)}"
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


def _load_verified(path: str | os.PathLike) -> tuple[dict, Path]:
    """Read a checkpoint with ``weights_only=True`` and check format, version and digest."""
    p = Path(path)
    obj = safe_torch_load(p)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            what = "a plain state dict"
        else:
            what = f"a {type(obj).__name__}"
        raise CheckpointError(
            f"checkpoint {p}: not a compatkit checkpoint (found {what} without the model's "
            "contract); write checkpoints with compatkit.checkpoint.format.save_checkpoint"
        )
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"checkpoint {p}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {p}: format version {version} is newer than this compatkit "
            f"({__version__}) supports (up to {FORMAT_VERSION}); upgrade compatkit"
        )
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {p}: missing field(s) {missing}")
    if not isinstance(obj["state_dict"], dict) or not isinstance(obj["contract"], dict):
        raise CheckpointError(f"checkpoint {p}: malformed state_dict or contract")
    try:
        digest = _digest(obj, obj["state_dict"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {p}: malformed content ({e})") from None
    if digest != obj["sha256"]:
        raise CheckpointError(
            f"checkpoint {p}: sha256 mismatch, the file was tampered with or corrupted "
            f"(stored {str(obj['sha256'])[:12]}..., computed {digest[:12]}...)"
        )
    obj["contract"] = {**_CONTRACT_DEFAULTS, **obj["contract"]}  # after the digest: as stored
    return obj, p


def _metadata(obj: dict, p: Path) -> dict:
    return {**{k: obj[k] for k in (*_META_KEYS, "sha256")}, "path": str(p)}


def read_contract(path: str | os.PathLike) -> dict:
    """The verified metadata of a checkpoint, without building the model.

    Returns the same dict as the second element of :func:`load_checkpoint`:
    ``format``, ``format_version``, ``compatkit_version``, ``contract``,
    ``classes_seen``, ``extra``, ``sha256`` and ``path``.
    """
    return _metadata(*_load_verified(path))


def _check_expect(p: Path, contract: dict, expect: Mapping[str, Any]) -> None:
    for key, want in expect.items():
        if key not in contract:
            raise CheckpointError(
                f"checkpoint {p}: {key!r} is not a contract key (keys: {sorted(contract)})"
            )
        have = contract[key]
        if isinstance(want, ClassMap):
            want = want.to_dict()
        if have != want:
            raise CheckpointError(f"checkpoint {p} has {key}={have!r} but {want!r} was expected")


def load_checkpoint(
    path: str | os.PathLike,
    expect: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[CompatModel, dict]:
    """Rebuild the model saved at ``path``; return ``(model, metadata)``.

    The file is always read with ``torch.load(weights_only=True)``. ``expect``
    lists contract values the caller relies on (for example
    ``{"head": "simplex", "feat_dim": 15}``); any difference is refused before
    a model is built. The model comes back on ``map_location`` in training
    mode, as a freshly built module would be; call ``.eval()`` to extract
    features.

    Raises:
        CheckpointError: missing, truncated or corrupt file; not a compatkit
            checkpoint; a newer format version; a digest mismatch; an
            ``expect`` mismatch; or weights that do not fit the contract.
    """
    obj, p = _load_verified(path)
    contract = obj["contract"]
    if expect:
        _check_expect(p, contract, expect)
    try:
        spec = ModelSpec.from_dict(contract)
        model = build_model(spec, ClassMap.from_dict(contract["class_map"]))
        model.head.grow(int(contract["head_rows"]))
    except (ImportError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {p}: cannot rebuild its model: {e}") from None
    problems = state_dict_mismatch(model.state_dict(), obj["state_dict"])
    if problems:
        raise CheckpointError(
            f"checkpoint {p}: weights do not fit the model its contract describes: {problems}"
        )
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as e:  # e.g. a dtype torch cannot copy; the mismatch check saw none
        cause = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(
            f"checkpoint {p}: weights do not fit the model its contract describes: {cause[:500]}"
        ) from None
    if model.contract() != contract:
        raise CheckpointError(
            f"checkpoint {p}: rebuilt model's contract differs from the stored one "
            f"({model.contract()} vs {contract})"
        )
    return model.to(map_location), _metadata(obj, p)


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, Any], limit: int = 8
) -> str | None:
    """Every difference between two state dicts, summarised on one line; None when they fit.

    Missing keys, unexpected keys and shape mismatches are each counted in full and the
    first ``limit`` of each are named (``load_state_dict`` reports them on many lines, and a
    one-line error cut to its first line used to hide all but the first kind).
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k} {list(found[k].shape)} vs {list(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if isinstance(found[k], torch.Tensor) and found[k].shape != expected[k].shape
    ]
    not_tensors = sorted(k for k in set(found) if not isinstance(found[k], torch.Tensor))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_names(missing, limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected, limit)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (file vs model): {_names(shapes, limit)}")
    if not_tensors:
        parts.append(f"{len(not_tensors)} entries that are not tensors: {_names(not_tensors)}")
    return "; ".join(parts) or None


# ----------------------------------------------------------------------------- compatibility


ModelLike = CompatModel | Mapping | str | os.PathLike
"""What :func:`check_compatible` compares: a model, a contract, a checkpoint's metadata dict
(from :func:`read_contract` or :func:`load_checkpoint`), or a checkpoint file."""


def _contract_of(c: Any) -> tuple[Mapping, str | None]:
    """The contract of any :data:`ModelLike`, and the file it came from (for messages)."""
    if isinstance(c, str | os.PathLike):
        return read_contract(c)["contract"], str(c)
    try:
        return _unwrap(c).contract(), None
    except TypeError:
        pass
    if isinstance(c, Mapping):
        if "contract" in c and isinstance(c["contract"], Mapping):
            return c["contract"], c.get("path") if isinstance(c.get("path"), str) else None
        return c, None
    raise TypeError(
        f"check_compatible compares models, contracts, checkpoint metadata or checkpoint "
        f"paths, got {type(c).__name__}"
    )


def _placements(class_map: Mapping, by_name: bool) -> dict[tuple[str, str | int], int]:
    """Row of each class, keyed by ``(space, class)``; local classes by name when ``by_name``."""
    names = class_map.get("names") or {}
    out: dict[tuple[str, str | int], int] = {}
    for space in ("local", "provider"):
        for cls, row in class_map.get(space, {}).items():
            key = names[str(cls)] if by_name and space == "local" else int(cls)
            out[(space, key)] = int(row)
    return out


def _fully_named(class_map: Mapping) -> bool:
    names = class_map.get("names") or {}
    return bool(names) and set(names) == {str(k) for k in class_map.get("local", {})}


def check_compatible(
    model_a: ModelLike, model_b: ModelLike, names: tuple[str, str] | None = None
) -> None:
    """Raise :class:`IncompatibleModels` when features of the two models cannot be compared.

    Refused: different feature dimensions; different input channels (they
    cannot embed the same images); two fixed heads (simplex/ETF) of different
    kind, K or ETF seed; and, between fixed heads, a class placed on different
    rows, or one row holding different classes, in the two class maps, since
    the fixed rows are where the features of each class are trained to be.
    When both class maps name every local class (``ClassMap.names``), a class
    is identified by its name, otherwise by its label.
    Allowed: any backbone change, and pairs involving a learnable head as
    long as the dimension matches (their rows carry no shared geometry, and
    measuring how such a pair fares is exactly what the ER baseline is for).

    Either argument may be a :class:`~compatkit.model.CompatModel` (also wrapped by DDP or
    ``torch.compile``), its ``contract()``, the metadata dict of :func:`read_contract` or
    :func:`load_checkpoint`, or the path of a checkpoint (read with ``weights_only=True``).
    ``names`` defaults to the file names where there are files, else "model A"/"model B".
    """
    a, file_a = _contract_of(model_a)
    b, file_b = _contract_of(model_b)
    na, nb = names or (file_a or "model A", file_b or "model B")

    def refuse(why: str) -> None:
        raise IncompatibleModels(f"{na} and {nb} are not compatible: {why}")

    for key in ("feat_dim", "in_channels", "head"):
        if key not in a or key not in b:
            refuse(f"contract lacks {key!r}")
    if a["feat_dim"] != b["feat_dim"]:
        refuse(f"feature dimensions differ ({na} {a['feat_dim']}, {nb} {b['feat_dim']})")
    if a["in_channels"] != b["in_channels"]:
        refuse(f"input channels differ ({na} {a['in_channels']}, {nb} {b['in_channels']})")
    if a["head"] not in _FIXED_HEADS or b["head"] not in _FIXED_HEADS:
        return
    if a["head"] != b["head"]:
        refuse(f"fixed heads of different kinds ({na} {a['head']!r}, {nb} {b['head']!r})")
    if a.get("num_classes") != b.get("num_classes"):
        refuse(
            f"{a['head']} heads with different K ({a.get('num_classes')} vs {b.get('num_classes')})"
        )
    if a["head"] == "etf" and a.get("etf_seed", 0) != b.get("etf_seed", 0):
        refuse(
            f"ETF frames built from different seeds ({a.get('etf_seed', 0)} vs "
            f"{b.get('etf_seed', 0)}), so their rows point in different directions"
        )
    ma, mb = a.get("class_map") or {}, b.get("class_map") or {}
    # Classes named in both maps (checkpoints of `compatkit train`) are the same class when
    # they have the same name, whatever their labels; otherwise labels identify classes.
    by_name = _fully_named(ma) and _fully_named(mb)
    pa, pb = _placements(ma, by_name), _placements(mb, by_name)

    def show(key: tuple[str, str | int]) -> str:
        space, cls = key
        return f"class {cls!r}" if isinstance(cls, str) else f"{space} class {cls}"

    for key in sorted(pa.keys() & pb.keys(), key=lambda k: (k[0], isinstance(k[1], str), k[1])):
        if pa[key] != pb[key]:
            refuse(f"{show(key)} sits on row {pa[key]} in {na} but on row {pb[key]} in {nb}")
    oa, ob = {r: k for k, r in pa.items()}, {r: k for k, r in pb.items()}
    for row in sorted(oa.keys() & ob.keys()):
        if oa[row] != ob[row]:
            refuse(f"row {row} holds {show(oa[row])} in {na} but {show(ob[row])} in {nb}")
