"""Reading a run configuration: YAML files and ``--set`` overrides into the typed schema.

Defaults, then the YAML file, then the overrides, merged as plain data and then built into
:class:`~compatkit.config.schema.RunConfig` by :func:`build`, which checks every value
against its annotation (a key the schema does not have, a string where a number goes, NaN,
an integer beyond 64 bits) and names the key of the first one at fault.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .schema import INT64_MAX, INT64_MIN, RunConfig, to_dict

__all__ = [
    "ConfigFileNotFound",
    "build",
    "coerce",
    "load_config",
    "parse_overrides",
    "read_config_file",
]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (after ``from __future__`` resolution)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {coerce(k, kt, key): coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        _check_plain_numbers(value, key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return _check_int(value, key)
    if tp is float:
        return _to_float(value, key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _check_int(value: int, key: str) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ConfigError(f"{key}: {_short(value)} does not fit in a 64-bit integer")
    return value


def _short(value: Any) -> str:
    """A value for a one-line message: a 5,000-digit integer is shown by its size."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _to_float(value: Any, key: str) -> float:
    """A finite float, or a ConfigError naming ``key``.

    Every float of the configuration goes through here, so a field added later is covered
    without new code: NaN and infinity (YAML ``.nan``/``.inf``, or strings such as ``nan``
    and ``1e999`` that ``float()`` accepts) would otherwise train a model to NaN and report
    it as a result.
    """
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {_short(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {_short(value)}")
    try:
        out = float(value)
    except OverflowError:
        raise ConfigError(f"{key}: {_short(value)} is too large for a number") from None
    if not math.isfinite(out):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    return out


_MAX_FREE_NODES = 10_000
"""Values a free-form (``Any``) config entry may hold. YAML aliases let a few lines expand to
billions of values (the "billion laughs"); no option of a method needs more than a few."""


def _check_plain_numbers(value: Any, key: str, budget: list[int] | None = None) -> None:
    """Finite floats and int64 integers inside a free-form (``Any``) value, at every depth."""
    budget = [_MAX_FREE_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"{key}: more than {_MAX_FREE_NODES} values in one entry")
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if isinstance(value, int):
        _check_int(value, key)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_plain_numbers(v, f"{key}.{k}", budget)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain_numbers(v, f"{key}[{i}]", budget)


def build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s}; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = coerce(value, hints[name], key)
    return cls(**kwargs)


def _set_path(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur: Any = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError) as e:
                raise ConfigError(f"--set {dotted}: no list item {p!r}") from e
            continue
        if p not in cur or cur[p] is None:
            cur[p] = {}
        if not isinstance(cur[p], (dict, list)):
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[: i + 1])} is not a mapping")
        cur = cur[p]
    last = parts[-1]
    if isinstance(cur, list):
        try:
            cur[int(last)] = value
        except (ValueError, IndexError) as e:
            raise ConfigError(f"--set {dotted}: no list item {last!r}") from e
    else:
        cur[last] = value


class ConfigFileNotFound(ConfigError, FileNotFoundError):
    """The config file named does not exist (also a FileNotFoundError)."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line} (first at line {first})")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    Plain ``yaml.safe_load`` keeps the last value silently, so a config holding two
    ``train:`` blocks would run with half of its settings ignored.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # unhashable key: the base constructor reports it
                pass
        return super().construct_mapping(node, deep=deep)


def _yaml_load(text: str, where: str) -> Any:
    """Parse YAML text strictly; every failure is one ConfigError line naming ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no tags run
    except _DuplicateKey as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where} is not valid YAML: nested too deeply") from None


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``key.sub=value`` pairs; the value is read as YAML (``3``, ``0.1``, ``[1, 2]``, ``true``)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ConfigError(f"--set expects key=value, got {item!r} (no key)")
        out.append((k.strip(), _yaml_load(v, f"--set {k.strip()}")))
    return out


def read_config_file(path: str | Path) -> dict:
    """The mapping of a YAML config file; one ConfigError line naming the file otherwise."""
    p = Path(path)
    if not p.exists():
        raise ConfigFileNotFound(f"config file {p} does not exist")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a regular file")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
            f"{e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror or e})") from None
    data = _yaml_load(text, f"config file {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then ``--set`` overrides; validated."""
    data: dict = read_config_file(path) if path is not None else {}
    base = to_dict(RunConfig())
    merged = _merge(base, data)
    for k, v in parse_overrides(overrides or []):
        _set_path(merged, k, v)
    cfg = build(RunConfig, merged)
    from .validate import validate  # validate imports this module (coerce): import it late

    validate(cfg)
    return cfg


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over
