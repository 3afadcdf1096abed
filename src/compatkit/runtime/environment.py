"""What a result was computed on: the record every run keeps in ``environment.json``."""

from __future__ import annotations

import platform
from typing import Any

import torch

from .. import __version__
from .device import Precision

__all__ = ["describe_environment"]


def describe_environment(device: torch.device, precision: Precision) -> dict[str, Any]:
    """Versions, device and precision of this process (JSON-able)."""
    return {
        "compatkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "precision": precision.name,
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
