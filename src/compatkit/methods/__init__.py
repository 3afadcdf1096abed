"""Training methods, one module each, registered by name (see ``base.py``)."""

from __future__ import annotations

import importlib

from .base import METHODS, Method, StepInputs, TaskContext, build_method, register_method

__all__ = [
    "METHODS",
    "Method",
    "StepInputs",
    "TaskContext",
    "build_method",
    "load_all",
    "register_method",
]

# Every method module; importing one registers it.
_MODULES = ("hoc", "er", "lwf", "bct", "fd", "cvs", "cores", "etf")


def load_all() -> dict[str, type[Method]]:
    """Import every method module present (baselines may be added one at a time)."""
    for mod in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise
    return METHODS
