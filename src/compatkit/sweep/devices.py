"""Which device each job of a sweep runs on: ``--devices``, parsed and assigned.

Pure functions (no CUDA call here), so the assignment is tested without a GPU:

- :func:`parse_devices`: ``"0,1,3"`` -> ``["cuda:0", "cuda:1", "cuda:3"]``, checked against the
  number of GPUs the caller sees;
- :func:`default_devices`: every visible GPU when the config lets compatkit choose the device
  (``device: auto`` or ``cuda``), else none (each job uses the config's device, unchanged);
- :func:`slots`: ``--jobs N`` worker slots over the devices, round robin; a job takes a free
  slot, so no two jobs share a device while ``N`` is at most the number of devices.

A job receives its device through the config's ``device`` key (``cuda:2``): the process
sees every GPU and the device name in the job's record is the physical one.
"""

from __future__ import annotations

import re

from ..errors import InputError

__all__ = ["default_devices", "parse_devices", "slots"]

_INDEX = re.compile(r"(?:cuda:)?(\d+)")


def parse_devices(text: str, cuda_count: int) -> list[str]:
    """``--devices`` as torch device names, in the order given.

    Accepts GPU indices (``0,1,2``), ``cuda:N`` names, or ``cpu`` alone; refuses an empty
    item, a repeated device, an index this machine does not have, and anything else.
    """
    items = [s.strip() for s in text.split(",")]
    if items == ["cpu"]:
        return ["cpu"]
    out: list[str] = []
    for item in items:
        m = _INDEX.fullmatch(item)
        if not m:
            raise InputError(
                f"--devices {text!r}: {item!r} is not a GPU index (use 0,1,2 or cuda:0,cuda:1, "
                "or cpu alone)"
            )
        index = int(m.group(1))
        if index >= cuda_count:
            seen = f"{cuda_count} CUDA device(s), numbered from 0" if cuda_count else "no GPU"
            raise InputError(f"--devices {text!r}: cuda:{index} asked for, this machine has {seen}")
        name = f"cuda:{index}"
        if name in out:
            raise InputError(f"--devices {text!r}: {name} is listed twice")
        out.append(name)
    return out


def default_devices(config_device: str, cuda_count: int) -> list[str]:
    """Every visible GPU when the config leaves the choice to compatkit, else ``[]``.

    ``auto`` and ``cuda`` (no index) mean "a GPU if there is one": the sweep spreads the jobs
    over all of them. A config that names a device (``cpu``, ``cuda:1``, ``mps``) keeps it.
    """
    if config_device in ("auto", "cuda") and cuda_count > 0:
        return [f"cuda:{i}" for i in range(cuda_count)]
    return []


def slots(jobs_n: int, devices: list[str]) -> list[str | None]:
    """The device of each of ``jobs_n`` worker slots: round robin over ``devices``.

    ``[]`` gives ``None`` per slot (the config's own device). With ``jobs_n`` at most
    ``len(devices)`` every slot has its own device; beyond that devices are shared evenly
    (slot ``i`` on ``devices[i % len(devices)]``), for models too small to fill one GPU.
    """
    if jobs_n < 1:
        raise InputError(f"--jobs must be >= 1, got {jobs_n}")
    if not devices:
        return [None] * jobs_n
    return [devices[i % len(devices)] for i in range(jobs_n)]
