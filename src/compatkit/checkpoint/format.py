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

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointError
from ..model import CompatModel, ModelSpec, build_model
from ..runtime.files import atomic_write
from ..runtime.safeload import name_list, safe_torch_load
from ..simplex import ClassMap

__all__ = [
    "FIXED_HEADS",
    "FORMAT",
    "FORMAT_VERSION",
    "atomic_torch_save",
    "content_digest",
    "file_sha256",
    "load_checkpoint",
    "read_contract",
    "save_checkpoint",
    "state_dict_mismatch",
    "unwrap_model",
]

FORMAT = "compatkit-checkpoint"
FORMAT_VERSION = 1

_META_KEYS = ("format", "format_version", "compatkit_version", "contract", "classes_seen", "extra")
_REQUIRED = (*_META_KEYS, "state_dict", "sha256")
FIXED_HEADS = ("simplex", "etf")
_CONTRACT_KEYS = (*ModelSpec.__dataclass_fields__, "head_rows", "class_map")
"""Every field a contract holds: a file lacking one cannot say what its model is."""


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


def unwrap_model(model: Any) -> CompatModel:
    """Accept a DDP- or torch.compile-wrapped CompatModel as well."""
    seen = model
    for _ in range(4):
        if isinstance(seen, CompatModel):
            return seen
        seen = getattr(seen, "module", None) or getattr(seen, "_orig_mod", None)
        if seen is None:
            break
    raise TypeError(f"save_checkpoint needs a CompatModel, got {type(model).__name__}")


def save_checkpoint(path: str | os.PathLike, model: CompatModel, extra: dict | None = None) -> None:
    """Write ``model`` and its contract to ``path`` atomically.

    The payload goes to a temporary file in the same directory, is fsynced,
    then renamed over ``path`` with ``os.replace``: a crash or an error while
    saving leaves either the old file or the new one, never half of one, and
    no temporary file behind.
    """
    m = unwrap_model(model)
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
    """``torch.save`` through compatkit's one atomic write: a crash or an error while saving
    leaves either the old file or the new one, never half of one."""
    path = Path(path)
    if path.is_dir():  # os.replace would fail with a traceback after the whole save
        raise CheckpointError(f"{path}: is a directory, cannot write a file there")
    atomic_write(path, lambda f: torch.save(payload, f))


# ----------------------------------------------------------------------------- loading
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
            "contract); write checkpoints with compatkit.checkpoint.save_checkpoint"
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
    lacking = [k for k in _CONTRACT_KEYS if k not in obj["contract"]]
    if lacking:
        raise CheckpointError(
            f"checkpoint {p}: its contract lacks {', '.join(map(repr, lacking))}, so it cannot "
            "say what model it holds"
        )
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


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, Any], limit: int = 8
) -> str | None:
    """Every difference between two state dicts, summarised on one line; None when they fit.

    Missing keys, unexpected keys and shape mismatches are each counted in full and the
    first ``limit`` of each are named (``load_state_dict`` reports them on many lines, and a
    one-line error cut to its first line would hide all but the first kind).
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
        parts.append(f"{len(missing)} missing key(s): {name_list(missing, limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {name_list(unexpected, limit)}")
    if shapes:
        parts.append(
            f"{len(shapes)} shape mismatch(es) (file vs model): {name_list(shapes, limit)}"
        )
    if not_tensors:
        parts.append(f"{len(not_tensors)} entries that are not tensors: {name_list(not_tensors)}")
    return "; ".join(parts) or None
