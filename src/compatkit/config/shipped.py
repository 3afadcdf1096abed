"""The configurations shipped with compatkit, found wherever the package is installed.

They live in the package (``compatkit/configs/*.yaml``, package data of the
wheel), so ``compatkit run`` works after a plain ``pip install`` with no
checkout around. In the repository ``src/compatkit/configs`` is a link to the
top-level ``configs/`` folder: one copy of each file, edited where users look
for it (``tests/test_configs.py`` checks that the two names hold the same files).
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from ..errors import ConfigError

__all__ = ["DEFAULT_CONFIG", "config_dir", "describe", "resolve_config", "shipped_configs"]

DEFAULT_CONFIG = "fashion"
"""What ``compatkit run`` runs without a CONFIG: the small Fashion-MNIST protocol."""


def config_dir() -> Path:
    """The folder of the shipped configs inside the installed package."""
    return Path(str(files("compatkit") / "configs"))


def shipped_configs() -> dict[str, Path]:
    """Shipped config name (file name without ``.yaml``) -> file, sorted by name."""
    d = config_dir()
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.yaml"))}


def resolve_config(name_or_path: str | None) -> Path:
    """A CONFIG argument as a file: an existing path, else a shipped config.

    ``None`` is the default config. When no such file exists, ``fashion_all``,
    ``fashion_all.yaml`` and ``configs/fashion_all.yaml`` (a checkout's path) name the shipped
    file, so the shipped configs run the same way from a checkout and after ``pip install``.
    """
    shipped = shipped_configs()
    names = ", ".join(shipped) or "none: the package's configs/ folder is missing"
    if name_or_path is None:
        if DEFAULT_CONFIG not in shipped:
            raise ConfigError(f"no default config {DEFAULT_CONFIG}.yaml in the package ({names})")
        return shipped[DEFAULT_CONFIG]
    path = Path(name_or_path)
    if path.is_file():
        return path
    bare = len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "configs")
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    if bare and stem in shipped:
        return shipped[stem]
    raise ConfigError(f"config file {name_or_path} does not exist (shipped configs: {names})")


def describe(path: Path) -> str:
    """One line about a config: the first sentence of its opening comment."""
    text = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if not body:
            if text:
                break
            continue
        text.append(body)
    prose = re.sub(r"\s*\([^()]*\)", "", " ".join(text))  # references in brackets
    m = re.search(r"^(.+?)\.(\s|$)", prose)
    return (m.group(1) if m else prose) or "(no description)"
