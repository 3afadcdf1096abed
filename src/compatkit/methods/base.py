"""What a training method is: data, not branches in the trainer.

A method declares the head it needs, whether it needs the frozen old model,
its hyperparameters (a dataclass), and its loss. The trainer
(:mod:`compatkit.protocol.trainer`) calls ``begin_task`` once per task and ``loss`` once
per batch and never asks which method it is running. Adding a method is one new module
that subclasses :class:`Method` and decorates it with :func:`register_method`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ..model import CompatModel, ModelOutput

__all__ = ["METHODS", "Method", "StepInputs", "TaskContext", "build_method", "register_method"]


@dataclass
class TaskContext:
    """What a method may know about the task it is trained on."""

    model: CompatModel
    old_model: CompatModel | None
    """Frozen, in eval mode; None when the method does not need it."""
    task_id: int
    new_classes: list[int]
    """Local classes introduced by this task."""
    old_classes: list[int]
    """Local classes the old model was trained on (its local class map)."""
    memory_images: torch.Tensor | None = None
    """uint8 images in the rehearsal memory at the start of the task (or None)."""
    memory_labels: torch.Tensor | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    normalize: Any = None
    """Callable turning a uint8 batch into the model's float input."""


@dataclass
class StepInputs:
    """One batch, as the trainer hands it to ``Method.loss``."""

    out: ModelOutput
    """New model's output on the (augmented) batch."""
    old: ModelOutput | None
    """Old model's output on the same batch (no grad), when ``needs_old``."""
    labels: torch.Tensor
    """Local class labels ``(B,)``."""
    targets: torch.Tensor
    """Rows of the new model's head for ``labels``."""


class Method:
    """Base class. Subclasses set ``name``, ``head``, ``needs_old``, ``Config`` and ``loss``."""

    name: ClassVar[str] = ""
    head: ClassVar[str] = "simplex"
    needs_old: ClassVar[bool] = False
    uses_memory: ClassVar[bool] = True
    old_rule: ClassVar[str | None] = None
    """Which model is "old" in a task: None follows the run's ``old_model`` setting (the
    reference rule: at a replacement, the new provider itself); ``"previous"`` always takes the
    model of the previous task (the one being replaced out), as BCT's influence loss needs."""
    paper: ClassVar[str] = ""

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: Any | None = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()

    def begin_task(self, ctx: TaskContext) -> None:
        """Per-task preparation (e.g. old class centres); default: nothing."""
        self.ctx = ctx

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Add ``cls`` to :data:`METHODS` under ``cls.name`` (a class decorator).

    Registering the same class again does nothing (a plugin imported twice); another class
    under a name already taken is refused, naming both.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    known = METHODS.get(cls.name)
    if known is cls:
        return cls
    if known is not None:
        raise ValueError(
            f"method {cls.name!r} is defined twice: by {known.__module__}.{known.__qualname__} "
            f"and by {cls.__module__}.{cls.__qualname__}"
        )
    if cls.head not in ("simplex", "etf", "learnable"):
        raise ValueError(f"method {cls.name!r} declares unknown head {cls.head!r}")
    METHODS[cls.name] = cls
    return cls


def build_method(name: str, options: dict | None = None) -> Method:
    """Instantiate a registered method with its Config filled from ``options`` (validated)."""
    from . import load_all  # the package imports this module: import it late

    load_all()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[name]
    options = dict(options or {})
    known = {f.name for f in fields(cls.Config)}
    bad = sorted(set(options) - known)
    if bad:
        raise ValueError(
            f"method {name!r} has no option(s) {bad}; its options are {sorted(known) or 'none'}"
        )
    return cls(cls.Config(**options))
