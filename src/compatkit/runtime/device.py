"""Where a computation runs and in which precision: one object instead of a dozen arguments.

Training, evaluation, analysis and embedding take a :class:`Runtime`: the device, the
autocast precision, the input scaling of the model's data and the process group. It is
resolved once from the config (``device``, ``precision``, ``channels_last``) and passed down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from .distributed import Dist

__all__ = ["Precision", "Runtime", "autocast", "resolve_device", "resolve_precision"]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU; otherwise the device named,
    refused in one line when this machine does not have it."""
    if name is None:
        name = "auto"
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device: {name!r} asked for, but this machine has {torch.cuda.device_count()} "
            "CUDA device(s), numbered from 0"
        )
    return dev


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None = fp32) and whether a GradScaler is needed (fp16 only)."""

    dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto``: bf16 on CUDA GPUs that support it, else fp16 with loss scaling; fp32 on CPU."""
    if device.type != "cuda":
        if name in ("fp16",):
            raise ConfigError("precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
        return Precision(torch.bfloat16, False) if name == "bf16" else Precision(None, False)
    if name == "auto":
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {
        "fp32": Precision(None, False),
        "bf16": Precision(torch.bfloat16, False),
        "fp16": Precision(torch.float16, True),
    }[name]


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


@dataclass
class Runtime:
    """The device, precision, input scaling and process group of a computation."""

    device: torch.device
    precision: Precision
    normalize: Callable[[torch.Tensor], torch.Tensor]
    """uint8 image batch -> the model's float input (a :class:`compatkit.data.Normalize`)."""
    dist: Dist = field(default_factory=Dist)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)
