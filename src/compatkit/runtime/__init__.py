"""Where and how compatkit runs: device and precision, processes, the run log, durable files,
and the layout of a run directory.

Nothing here knows about methods, models or the protocol; every other package may use it.
"""

from .device import Precision, Runtime, autocast, resolve_device, resolve_precision
from .distributed import Dist
from .layout import RunDir
from .log import RunLog

__all__ = [
    "Dist",
    "Precision",
    "RunDir",
    "RunLog",
    "Runtime",
    "autocast",
    "resolve_device",
    "resolve_precision",
]
