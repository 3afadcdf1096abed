"""Training methods, one module each, registered by name; more from other packages.

A method is a :class:`Method` subclass decorated with :func:`register_method` (see
``base.py``). The built-in ones are imported on first use. A method defined outside
compatkit joins the same registry in one of two ways, and then runs everywhere a built-in
one does (``compatkit run``, ``sweep``, ``train --method``):

- an installed package declares it in the entry-point group ``compatkit.methods``
  (``[project.entry-points."compatkit.methods"] name = "package.module"``); every installed
  entry point is loaded with the built-in methods;
- a config names the module to import in its ``plugins`` list.

``docs/adding-a-method.md`` walks through one.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from ..errors import ConfigError
from .base import METHODS, Method, StepInputs, TaskContext, build_method, register_method

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "METHODS",
    "Method",
    "StepInputs",
    "TaskContext",
    "build_method",
    "load_all",
    "load_plugins",
    "register_method",
]

BUILTIN = ("hoc", "er", "lwf", "bct", "fd", "cvs", "cores", "etf")
"""The method modules of compatkit; importing one registers its methods."""

ENTRY_POINT_GROUP = "compatkit.methods"
"""The entry-point group through which installed packages add methods."""

_loaded = False


def load_all() -> dict[str, type[Method]]:
    """Register the built-in methods and those of every installed entry point (once)."""
    global _loaded
    if not _loaded:
        for mod in BUILTIN:
            importlib.import_module(f"{__name__}.{mod}")
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = f" of {ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
            _register_from(lambda ep=ep: ep.load(), f"entry point {ep.name!r}{dist} ({ep.value})")
        _loaded = True
    return METHODS


def load_plugins(modules: list[str], key: str = "plugins") -> dict[str, type[Method]]:
    """Import each module of ``modules`` (a config's ``plugins``); each registers its methods."""
    load_all()
    for i, name in enumerate(modules):
        _register_from(lambda name=name: importlib.import_module(name), f"{key}[{i}] {name!r}")
    return METHODS


def _register_from(load, where: str) -> None:
    """Load a plugin; a class it names is registered, a module registers its own classes."""
    try:
        obj = load()
    except Exception as e:  # a broken plugin is the user's to fix: one line naming it
        raise ConfigError(
            f"method plugin {where} cannot be loaded: {type(e).__name__}: {e}"
        ) from None
    if isinstance(obj, type) and issubclass(obj, Method):
        try:
            register_method(obj)
        except ValueError as e:
            raise ConfigError(f"method plugin {where}: {e}") from None
