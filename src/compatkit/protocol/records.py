"""A run's records: what identifies a run, what a resume may change, memory files, the cache.

The paths of a run directory are :class:`~compatkit.runtime.layout.RunDir`'s. Providers are
not in it: they are shared by every run through one cache folder (:func:`cache_dir`).

Three rules keep results honest when runs are resumed, copied or mixed up:

- **A resume continues the run it finds.** It uses the run's own ``config.yaml``;
  settings that shape the results may not change (:func:`result_changes`), only
  those that change how fast or where the same computation runs
  (:data:`NEUTRAL_KEYS`).
- **Every file says what it is.** Task checkpoints and memory files record the
  method, seed, zero-based task and run id; whoever reads one checks it against
  the slot it was found in (:func:`check_identity`), so an ER checkpoint in HOC's
  folder, another task's file or another run's file is refused, naming the file.
- **Memory files get the care of checkpoints**: temporary file, fsync, atomic
  rename, format marker and SHA-256 digest, read with ``weights_only=True``
  (:func:`save_memory`, :func:`load_memory`).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import __version__
from ..checkpoint import atomic_torch_save, content_digest, safe_torch_load
from ..config import load_config, to_dict
from ..errors import CheckpointError, ConfigError
from ..runtime.device import Precision
from ..runtime.environment import describe_environment
from ..runtime.files import atomic_write_json, atomic_write_text
from ..runtime.layout import RunDir

__all__ = [
    "CACHE_ENV",
    "MEMORY_FORMAT",
    "NEUTRAL_KEYS",
    "RUN_FILE",
    "cache_dir",
    "check_identity",
    "describe_identity",
    "ensure_run_record",
    "load_memory",
    "providers_cache",
    "read_run_id",
    "result_changes",
    "save_memory",
    "write_run_records",
]

CACHE_ENV = "COMPATKIT_CACHE"
"""Environment variable that moves compatkit's cache (trained providers)."""

RUN_FILE = "run.json"
MEMORY_FORMAT = "compatkit-memory"
MEMORY_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """compatkit's cache: ``$COMPATKIT_CACHE``, else ``$XDG_CACHE_HOME/compatkit``, else
    ``~/.cache/compatkit``. Nothing in it is precious: every file can be rebuilt."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "compatkit"


def providers_cache() -> Path:
    """Where trained providers are kept and found by ``run`` and ``pretrain`` alike, unless a
    config sets ``providers_dir``. A provider's file name holds its recipe key, so runs of
    different configs share the folder without mixing their providers."""
    return cache_dir() / "providers"


# --------------------------------------------------------------------------- run identity


def read_run_id(run_dir: str | os.PathLike) -> str | None:
    """The id in ``run_dir/run.json``; None while the folder has no run record yet."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        run_id = rec["run_id"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ConfigError(f"{path}: not a run record ({type(e).__name__}: {e})") from None
    if not isinstance(run_id, str) or not run_id:
        raise ConfigError(f"{path}: run_id must be a non-empty string, got {run_id!r}")
    return run_id


def ensure_run_record(run_dir: str | os.PathLike) -> str:
    """Create ``run.json`` with a fresh random id unless the run has one; return the id."""
    run_id = read_run_id(run_dir)
    if run_id is not None:
        return run_id
    run_id = secrets.token_hex(8)
    path = Path(run_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "compatkit": __version__,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{RUN_FILE}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(rec, indent=1))
    try:  # create-if-absent in one step: processes sharing a run agree on one id
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return read_run_id(run_dir) or run_id


# --------------------------------------------------------------------------- run records


def write_run_records(dirs: RunDir, cfg: Any, device: torch.device, precision: Precision) -> str:
    """Create a run's records (config.yaml, run.json, environment.json), or check them.

    A run's config.yaml is never overwritten: when it exists (a resume), the settings must
    agree on every key that shapes the results, and the precision this machine resolves must
    be the one the run was trained with. Returns the run id.
    """

    if dirs.config.is_file():
        changes = result_changes(load_config(dirs.config), cfg)
        if changes:
            raise ConfigError(
                f"{dirs.config} holds other settings: {format_changes(changes)}; a run's config "
                "is never rewritten (resume with its own settings, or start a new run)"
            )
        _check_precision(dirs.environment, precision)
    else:
        atomic_write_text(dirs.config, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    run_id = ensure_run_record(dirs.root)
    if not dirs.environment.is_file():
        atomic_write_json(dirs.environment, describe_environment(device, precision), indent=2)
    return run_id


def _check_precision(env_file: Path, precision: Precision) -> None:
    if not env_file.is_file():
        return
    try:
        saved = json.loads(env_file.read_text()).get("precision")
    except (ValueError, AttributeError):
        saved = None
    if saved and saved != precision.name:
        raise ConfigError(
            f"precision: this run was trained in {saved} ({env_file}), this machine "
            f"resolves {precision.name}; resume where the run started, or set "
            f"device/precision so that it resolves to {saved}"
        )


# --------------------------------------------------------------------------- resume


NEUTRAL_KEYS: dict[str, str] = {
    "name": "the run's label",
    "device": "where the same computation runs (a change of resolved precision is refused)",
    "num_workers_threads": "CPU threads",
    "channels_last": "memory layout on CUDA",
    "compile": "torch.compile: the same model, compiled",
    "providers_dir": "where providers are cached (each file is checked against its recipe)",
    "eval.batch_size": "images per forward pass during feature extraction (no grad, eval mode)",
}
"""Config keys a resume may change: they decide how fast or where the run computes, not what
it computes. Every other key shapes the results (data, model, method, schedule, seeds,
evaluation), so a resume that changes one would mix two experiments in one run."""


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    if isinstance(obj, list) and obj and all(isinstance(v, Mapping) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}.{i}"))
        out[f"{prefix}.#"] = len(obj)
        return out
    return {prefix: obj}


def result_changes(saved: Any, asked: Any) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, asked value)`` for every result-shaping key that differs.

    Both arguments are ``RunConfig`` objects (or their dicts); keys are dotted
    (``train.epochs``, ``providers.1.epochs``); :data:`NEUTRAL_KEYS` are left out.
    """

    a, b = _flatten(to_dict(saved)), _flatten(to_dict(asked))
    missing = object()
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key in NEUTRAL_KEYS:
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            out.append((key, None if va is missing else va, None if vb is missing else vb))
    return out


def format_changes(changes: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    """``train.epochs (1 -> 30), seeds ([7] -> [7, 8])``, at most ``limit`` keys, values cut."""

    def short(v: Any) -> str:
        s = json.dumps(v) if not isinstance(v, str) else v
        return s if len(s) <= 40 else s[:37] + "..."

    parts = [f"{k} ({short(a)} -> {short(b)})" for k, a, b in changes[:limit]]
    more = len(changes) - limit
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- identity


def describe_identity(extra: Mapping[str, Any]) -> str:
    """What a file's metadata says it is, in words (tasks numbered from 1)."""
    role = extra.get("role")
    if role == "provider":
        return f"provider {extra.get('index')} ({extra.get('name') or 'unnamed'})"
    if role not in ("task", "memory"):
        return "a file with no task record"
    task = extra.get("task")
    task_s = f"task {task + 1}" if isinstance(task, int) else "task ?"
    run = extra.get("run_id")
    return f"{extra.get('method')} seed {extra.get('seed')} {task_s}" + (
        f" of run {run}" if run else " of an unidentified run"
    )


def check_identity(
    meta_extra: Mapping[str, Any],
    path: str | os.PathLike,
    what: str,
    *,
    method: str,
    seed: int,
    task: int,
    run_id: str | None,
    role: str = "task",
) -> None:
    """Refuse a task checkpoint or memory file found in a slot that is not its own.

    ``run_id`` None (a folder without a run record) skips the run check only.
    """
    want = {"role": role, "method": method, "seed": seed, "task": task}
    if run_id is not None:
        want["run_id"] = run_id
    bad = [k for k, v in want.items() if meta_extra.get(k) != v]
    if bad:
        expected = describe_identity({**want, "run_id": run_id})
        raise CheckpointError(
            f"{what} {path} is {describe_identity(meta_extra)}, but this slot is for {expected} "
            f"(differs in {', '.join(bad)}): a file from another method, task or run; put the "
            "right file back, or start a new run"
        )


# --------------------------------------------------------------------------- memory files


def save_memory(
    path: str | os.PathLike, state: Mapping[str, Any], extra: Mapping[str, Any]
) -> None:
    """Write a ``RehearsalMemory.state_dict()`` with its identity, atomically and digested."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    meta = {
        "format": MEMORY_FORMAT,
        "format_version": MEMORY_FORMAT_VERSION,
        "compatkit_version": __version__,
        "extra": dict(extra),
        "scalars": scalars,
    }
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}
    atomic_torch_save({**meta, "tensors": tensors, "sha256": content_digest(meta, tensors)}, path)


def load_memory(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, extra)`` of a memory file; any damage is one :class:`CheckpointError` line."""
    p = Path(path)
    obj = safe_torch_load(p, "memory file")
    if not isinstance(obj, dict):
        raise CheckpointError(f"memory file {p}: holds a {type(obj).__name__}, not a memory state")
    if obj.get("format") != MEMORY_FORMAT:
        raise CheckpointError(f"memory file {p}: format {obj.get('format')!r}, not a memory file")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > MEMORY_FORMAT_VERSION:
        raise CheckpointError(f"memory file {p}: unsupported format version {version!r}")
    try:
        meta = {k: obj[k] for k in ("format", "format_version", "compatkit_version", "extra")}
        meta["scalars"] = obj["scalars"]
        tensors = obj["tensors"]
        digest = content_digest(meta, tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"memory file {p}: malformed content ({e})") from None
    if digest != obj.get("sha256"):
        raise CheckpointError(
            f"memory file {p}: sha256 mismatch, the file is corrupt or was edited"
        )
    return {**meta["scalars"], **tensors}, dict(meta["extra"])
