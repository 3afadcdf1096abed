"""The interface every tracking backend implements: one logged run, written to as it goes.

A logged run is one (method, seed) sequence of a compatkit run, one provider, or one
``compatkit train``; runs of one compatkit run share a *group*. Scalars are logged against
an *axis*: ``train/step`` (the optimiser step, counted through a whole sequence), ``task``
(task t = 1..T) or ``epoch``; each backend maps that onto its own notion of a step.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["BACKENDS", "RunInfo", "Tracker", "check_backends", "flatten"]

BACKENDS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install 'compatkit[tensorboard]'"),
    "wandb": ("wandb", "pip install 'compatkit[wandb]'"),
    "mlflow": ("mlflow", "pip install 'compatkit[mlflow]'"),
}
"""Backend name -> (the module it needs, how to install it)."""


@dataclass
class RunInfo:
    """What a backend needs to open one logged run."""

    root: Path
    """The folder local files go to (a compatkit run's directory)."""
    group: str
    """The compatkit run this logged run belongs to (its directory's name)."""
    name: str
    """Unique within the group: ``hoc/seed_42``, ``providers/fm-p0-simplex``, ..."""
    kind: str
    """``sequence``, ``provider`` or ``train``."""
    config: Mapping[str, Any]
    """The resolved configuration (JSON-able)."""
    environment: Mapping[str, Any]
    """``describe_environment()`` of the process that trains."""
    tags: Mapping[str, Any] = field(default_factory=dict)
    """Method, seed, provider index...: what a reader filters the group's runs by."""


class Tracker(ABC):
    """One logged run in one backend."""

    @abstractmethod
    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        """Scalars at ``step`` of ``axis`` (``train/step``, ``task`` or ``epoch``)."""

    def log_steps(self, rows: Sequence[tuple[int, Mapping[str, float]]], axis: str) -> None:
        """Many steps at once (a backend that can send them in one request overrides it)."""
        for step, values in rows:
            self.log_scalars(values, step, axis)

    @abstractmethod
    def log_image(self, tag: str, png: bytes, step: int) -> None:
        """A figure, as PNG bytes."""

    @abstractmethod
    def log_table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table (the compatibility matrix, one row per query model)."""

    @abstractmethod
    def log_summary(self, values: Mapping[str, float]) -> None:
        """The run's final numbers (AC, AM, BC, FC, final local accuracy...)."""

    @abstractmethod
    def close(self, failed: bool = False) -> None:
        """Finish the run (marked failed when the work raised)."""


def check_backends(names: Sequence[str]) -> list[str]:
    """``names`` checked, deduplicated, in order; a missing package is one line naming its
    pip command, before anything is written."""
    out: list[str] = []
    for raw in names:
        for name in (n.strip().lower() for n in str(raw).split(",")):
            if not name or name in out:
                continue
            if name not in BACKENDS:
                raise InputError(
                    f"--log {name}: unknown tracking backend; choose from {', '.join(BACKENDS)}"
                )
            module, pip = BACKENDS[name]
            if importlib.util.find_spec(module) is None:
                raise InputError(f"--log {name}: {module} is not installed ({pip})")
            out.append(name)
    return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 0.01, "providers.0.epochs": 8, ...}`` (backends whose
    parameters are flat)."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and any(isinstance(v, Mapping | list) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: obj}
