"""The grid of a sweep: ``--vary KEY=V1,V2,...`` options to settings, one per method.

A grid point is the base configuration with one value of each varied key (the product of the
``--vary`` options). Each method of a grid point becomes its own *setting*: the configuration
with ``methods: [m]`` and only ``m``'s options, which is all that shapes that method's results.
Settings are identified by a hash of that effective configuration, seeds excluded, so

- a key that does not apply to a method (``method_options.hoc.lam`` for ER) does not make
  that method run again: ER is run once in a lambda sweep;
- a setting run with one seed while exploring is reused, and completed, when a later sweep
  asks for three seeds;
- a sweep directory can take several ``compatkit sweep`` invocations, each adding its grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, load_config, to_dict
from ..errors import ConfigError

__all__ = [
    "Setting",
    "Vary",
    "blame",
    "expand",
    "parse_vary",
    "setting_hash",
    "split_top_level",
]

NOT_SHAPING = ("name", "seeds", "providers_dir", "num_workers_threads")
"""Config keys that decide where and how fast a run goes, not its numbers (not hashed)."""


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``[]``, ``{}``, ``()`` or quotes.

    ``"[42,43],[44]"`` -> ``["[42,43]", "[44]"]``; ``"1e-3,3e-3"`` -> ``["1e-3", "3e-3"]``.
    """
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"--vary: unbalanced {ch!r} in {text!r}")
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if depth or quote:
        raise ConfigError(f"--vary: unbalanced brackets or quotes in {text!r}")
    parts.append("".join(cur).strip())
    return parts


@dataclass(frozen=True)
class Vary:
    """One ``--vary KEY=V1,V2,...`` option: the key and the values as written (YAML text)."""

    key: str
    values: tuple[str, ...]


def parse_vary(items: list[str]) -> list[Vary]:
    """``["train.lr=1e-3,3e-3", "seeds=[42],[43]"]`` -> ``[Vary, ...]``, checked."""
    out: list[Vary] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--vary expects KEY=V1,V2,..., got {item!r}")
        key, text = (s.strip() for s in item.split("=", 1))
        if not key:
            raise ConfigError(f"--vary {item!r}: no key before '='")
        values = split_top_level(text)
        if any(v == "" for v in values):
            raise ConfigError(f"--vary {key}: an empty value in {text!r}")
        for v in values:
            try:
                yaml.safe_load(v)
            except yaml.YAMLError as e:
                raise ConfigError(f"--vary {key}: cannot read value {v!r} as YAML") from e
        if len(set(values)) != len(values):
            raise ConfigError(f"--vary {key}: a value is listed twice in {text!r}")
        if any(v.key == key for v in out):
            raise ConfigError(f"--vary {key} is given twice; list every value in one option")
        out.append(Vary(key, tuple(values)))
    return out


def _applies(key: str, method: str) -> bool:
    """Whether a varied key can change ``method``'s results (other methods' options cannot)."""
    parts = key.split(".")
    if parts[0] == "methods" or parts[0] in NOT_SHAPING:
        return False  # which methods run, the seeds (aggregated), where files go
    if parts[0] == "method_options" and len(parts) > 1:
        return parts[1] == method
    return True


def _effective(cfg: RunConfig, method: str) -> dict[str, Any]:
    """The configuration of one method's runs, as a dict: ``methods: [m]`` and m's options
    only, every option written out (a default left implicit and the same value written
    explicitly are one setting)."""
    from ..methods import build_method

    d = to_dict(cfg)
    d["methods"] = [method]
    opts = build_method(method, d["method_options"].get(method)).cfg
    d["method_options"] = {method: dataclasses.asdict(opts)}
    return d


def blame(
    config: str | Path | None, overrides: list[str], point: dict[str, str], error: ConfigError
) -> ConfigError:
    """``error`` (raised by one grid point) with what is at fault in front of it.

    When the config and ``--set`` alone fail the same way, the point is innocent: the error
    names the config file (or the ``--set`` values); otherwise it names the point's values.
    """
    msg = str(error)

    def fails_alike(sets: list[str]) -> bool:
        try:
            load_config(config, sets)
        except ConfigError as e:
            return str(e) == msg
        return False

    if point and not fails_alike(overrides):
        where = ", ".join(f"{k}={val}" for k, val in point.items())
        return ConfigError(f"sweep point {where}: {msg}")
    if overrides and not fails_alike([]):
        return ConfigError(f"--set {' '.join(overrides)}: {msg}")
    return ConfigError(msg if str(config) in msg else f"config {config}: {msg}")


def setting_hash(effective: dict[str, Any]) -> str:
    """Identity of a setting: its effective configuration without :data:`NOT_SHAPING` keys."""
    blob = {k: v for k, v in effective.items() if k not in NOT_SHAPING}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:10]


def _slug(values: dict[str, str]) -> str:
    text = "_".join(f"{k.split('.')[-1]}{v}" for k, v in values.items())
    text = re.sub(r"[^A-Za-z0-9.+-]+", "", text.replace("_", "-"))
    return text[:48].strip("-")


@dataclass
class Setting:
    """One method under one configuration: a run directory holding one sequence per seed."""

    method: str
    hash: str
    config: dict[str, Any]
    """The effective configuration (``methods: [method]``), seeds included."""
    values: dict[str, str] = field(default_factory=dict)
    """The varied keys that apply to this method and their values, as written."""

    @property
    def name(self) -> str:
        slug = _slug(self.values)
        return f"{self.method}-{slug}-{self.hash}" if slug else f"{self.method}-{self.hash}"

    @property
    def seeds(self) -> list[int]:
        return list(self.config["seeds"])


def expand(config: str | Path | None, overrides: list[str], vary: list[Vary]) -> list[Setting]:
    """Every setting of the grid, validated, in grid order, each once (see the module doc).

    Each grid point is read as ``load_config(config, overrides + KEY=VALUE of the point)``,
    so a value means exactly what it means after ``--set``. A refusal names what is at fault:
    the config file, the ``--set`` values, or the grid point (see :func:`blame`).
    """
    seen: dict[str, Setting] = {}
    for combo in itertools.product(*(v.values for v in vary)):
        point = dict(zip((v.key for v in vary), combo, strict=True))
        sets = [*overrides, *(f"{k}={val}" for k, val in point.items())]
        try:
            cfg = load_config(config, sets)
        except ConfigError as e:
            raise blame(config, overrides, point, e) from e
        for m in cfg.methods:
            eff = _effective(cfg, m)
            h = setting_hash(eff)
            if h in seen:  # e.g. --vary seeds=[42],[43]: one setting over both seeds
                known = seen[h].config["seeds"]
                known += [s for s in eff["seeds"] if s not in known]
                continue
            values = {k: val for k, val in point.items() if _applies(k, m)}
            seen[h] = Setting(m, h, eff, values)
    return list(seen.values())
