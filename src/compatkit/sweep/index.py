"""The sweep directory and its index, ``sweep.json``: the single source of truth of a sweep.

Layout::

    DIR/sweep.json                 every invocation's command, every setting and its seeds
    DIR/runs/<setting>/            a normal compatkit run (config.yaml, metrics.json, report.md)
    DIR/runs/<setting>/<method>/seed_<s>/done.json   written when that seed is evaluated
    DIR/runs/<setting>/<method>/seed_<s>/job.json    who runs (or ran) that seed, and where
    DIR/launcher/                  a cluster launcher's submissions and logs
    DIR/summary.{md,json,csv}, DIR/front.png

Everything read back from the directory is checked before it is used: a setting's name must
be one folder name inside ``DIR/runs`` (``../x``, ``/abs`` or a link out of the directory are
refused), its seeds a list of integers, its method a plain name. A damaged or edited index is
one error line naming the file and the entry, never a write outside ``DIR``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config.schema import INT64_MAX, INT64_MIN
from ..errors import InputError
from ..runtime.files import atomic_write_text, file_lock, read_json
from ..runtime.layout import RunDir
from .grid import Setting

__all__ = ["FORMAT", "INDEX", "Job", "SweepDir", "safe_name"]

INDEX = "sweep.json"
FORMAT = 1

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
"""One folder name: no separator, never ``.`` or ``..``, no leading dot or dash."""
_HASH = re.compile(r"[0-9a-f]{6,64}")


def safe_name(name: object) -> bool:
    """Whether ``name`` is a single, plain folder name (see :data:`_NAME`)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Job:
    """One seed of one setting, with the configuration it runs (seeds: the setting's)."""

    setting: str
    """The setting's hash."""
    dir: str
    """The setting's run directory (absolute)."""
    method: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The setting's effective configuration, from the command line that asked for the job:
    a job never takes its configuration (paths included) from a file of the sweep directory."""

    @property
    def key(self) -> str:
        """``<hash>:<seed>``: the job's name in the launcher's records."""
        return f"{self.setting}:{self.seed}"

    @property
    def seed_dir(self) -> Path:
        return RunDir(self.dir).seed(self.method, self.seed)

    @property
    def label(self) -> str:
        """``<setting name> seed <s>``, for messages."""
        return f"{Path(self.dir).name} seed {self.seed}"


def _check_index(index: Any, where: Path) -> dict[str, Any]:
    """The index as read, or one InputError line naming the entry at fault."""

    def bad(what: str) -> InputError:
        return InputError(
            f"{where}: {what}; restore the file or continue the sweep in another --out"
        )

    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise bad("not a compatkit sweep index (format)")
    settings, invocations = index.get("settings"), index.get("invocations")
    if not isinstance(settings, dict) or not isinstance(invocations, list):
        raise bad("'settings' must be a mapping and 'invocations' a list")
    names: dict[str, str] = {}
    for h, e in settings.items():
        if not _HASH.fullmatch(str(h)):
            raise bad(f"setting {h!r} is not a setting hash")
        if not isinstance(e, dict):
            raise bad(f"settings.{h} must be a mapping")
        name, method, seeds, values = (
            e.get("name"),
            e.get("method"),
            e.get("seeds"),
            e.get("values"),
        )
        if not safe_name(name):
            raise bad(
                f"settings.{h}.name {name!r} is not a folder name inside {where.parent / 'runs'} "
                "(letters, digits, '.', '_', '+', '-')"
            )
        if name in names:
            raise bad(f"settings {names[name]} and {h} have the same name {name!r}")
        names[name] = h
        if not safe_name(method):
            raise bad(f"settings.{h}.method {method!r} is not a method name")
        ok_seeds = isinstance(seeds, list) and all(
            isinstance(s, int) and not isinstance(s, bool) and INT64_MIN <= s <= INT64_MAX
            for s in seeds
        )
        if not ok_seeds:
            raise bad(f"settings.{h}.seeds must be a list of integers, got {seeds!r}")
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            raise bad(f"settings.{h}.values must map config keys to values as written")
    for i, inv in enumerate(invocations):
        ok = isinstance(inv, dict) and isinstance(inv.get("command"), str)
        if not ok or not isinstance(inv.get("settings", []), list):
            raise bad(f"invocations[{i}] must hold a command and its list of settings")
    return index


class SweepDir:
    """A sweep directory: its index, its settings' run directories, its lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self.runs = self.path / "runs"
        self.index_path = self.path / INDEX
        self.index: dict[str, Any] = {"format": FORMAT, "invocations": [], "settings": {}}
        if self.index_path.is_file():
            self.index = _check_index(read_json(self.index_path, "sweep index"), self.index_path)
        elif self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {self.path}: exists and is not a directory")
        elif self.path.exists() and any(p.name != ".lock" for p in self.path.iterdir()):
            raise InputError(
                f"{self.path} exists and is not a sweep directory (no {INDEX}); "
                "choose another --out"
            )

    @property
    def exists(self) -> bool:
        return self.index_path.is_file()

    def lock(self) -> contextlib.AbstractContextManager:
        """Hold ``DIR/.lock`` (released by the kernel even when the process is killed)."""

        def refuse() -> InputError:
            return InputError(
                f"another compatkit sweep is running in {self.path}; wait for it to finish"
            )

        return file_lock(self.path / ".lock", 0, refuse)

    # ------------------------------------------------------------------ settings
    def setting_dir(self, s: Setting | dict) -> Path:
        """A setting's run directory, named when the setting was first added (a later
        invocation that varies other keys finds it by its hash, not by a new name).

        Always a folder directly inside ``DIR/runs``: a name that is not one folder name, or
        a link in place of the folder, is refused."""
        if isinstance(s, Setting):
            entry = self.index["settings"].get(s.hash)
            name = entry["name"] if entry else s.name
        else:
            name = s["name"]
        if not safe_name(name):
            raise InputError(f"{self.index_path}: setting name {name!r} is not a folder name")
        d = self.runs / name
        if d.is_symlink():
            raise InputError(f"{d}: a link; a setting's run directory must be a real folder")
        return d

    def add(self, settings: list[Setting], argv: list[str], write: bool = True) -> None:
        """Record an invocation and its settings (seeds: the union over invocations); with
        ``write``, write each setting's config.yaml and the index (a dry run does not)."""
        known = self.index["settings"]
        for s in settings:
            entry = known.get(s.hash)
            if entry is None:
                entry = {"method": s.method, "name": s.name, "values": s.values, "seeds": []}
                known[s.hash] = entry
            else:  # another invocation's point of view: keep both sets of varied keys
                entry["values"] = {**s.values, **entry["values"]}
            entry["seeds"] = entry["seeds"] + [x for x in s.seeds if x not in entry["seeds"]]
            if write:
                d = self.setting_dir(entry)
                d.mkdir(parents=True, exist_ok=True)
                cfg = {**s.config, "seeds": entry["seeds"]}
                atomic_write_text(RunDir(d).config, yaml.safe_dump(cfg, sort_keys=False))
        self.index["invocations"].append(
            {
                "command": "compatkit " + shlex.join(argv),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "settings": [s.hash for s in settings],
            }
        )
        if write:
            self.save_index()

    def save_index(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.index_path, json.dumps(self.index, indent=1))

    def snapshot(self) -> dict[str, Any]:
        """A copy of the index (a dry run changes the copy, never the directory)."""
        return copy.deepcopy(self.index)

    def jobs(self, settings: list[Setting]) -> tuple[list[Job], list[Job]]:
        """``(pending, finished)`` jobs of the given settings, in grid order; each job carries
        the setting's configuration as this invocation computed it."""
        pending, finished = [], []
        for s in settings:
            e = self.index["settings"][s.hash]
            d = str(self.setting_dir(e))
            for seed in e["seeds"]:
                job = Job(s.hash, d, s.method, int(seed), {**s.config, "seeds": e["seeds"]})
                (finished if RunDir(d).done(s.method, seed).is_file() else pending).append(job)
        return pending, finished

    def done_seeds(self, h: str) -> list[int]:
        """The seeds of setting ``h`` that have a ``done.json``."""
        e = self.index["settings"][h]
        d = RunDir(self.setting_dir(e))
        return [int(s) for s in e["seeds"] if d.done(e["method"], int(s)).is_file()]
