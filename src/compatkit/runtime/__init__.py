"""Where and how compatkit runs: device and precision, processes, the run log, durable files.

Nothing here knows about methods, models or the protocol; every other package may use it.
"""

from .device import Precision, Runtime, autocast, resolve_device, resolve_precision
from .distributed import Dist
from .log import RunLog

__all__ = [
    "Dist",
    "Precision",
    "RunLog",
    "Runtime",
    "autocast",
    "resolve_device",
    "resolve_precision",
]
