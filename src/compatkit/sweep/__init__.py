"""Sweeps: a grid of runs sharing providers, resumable as a whole, on every GPU of a machine
or on a cluster, summarised as a front of compatibility against plasticity
(``compatkit sweep``).

- :mod:`~compatkit.sweep.grid`: ``--vary`` options to settings (one per method, deduplicated);
- :mod:`~compatkit.sweep.index`: the sweep directory and its checked index, ``sweep.json``;
- :mod:`~compatkit.sweep.execute`: the work (providers, one job per seed, assembly);
- :mod:`~compatkit.sweep.devices`: which device each job runs on (``--devices``);
- :mod:`~compatkit.sweep.launch`: the launcher interface and the local launcher;
- :mod:`~compatkit.sweep.cluster`: the submitit launcher (SLURM, or submitit's local executor);
- :mod:`~compatkit.sweep.plan`: ``--dry-run``;
- :mod:`~compatkit.sweep.summary`: the summary table and the compatibility/plasticity front.
"""

from __future__ import annotations

from .devices import default_devices, parse_devices, slots
from .execute import run_job
from .grid import Setting, Vary, expand, parse_vary, split_top_level
from .index import Job, SweepDir
from .launch import Failure, Launcher, LocalLauncher
from .summary import pareto, write_summary

__all__ = [
    "Failure",
    "Job",
    "Launcher",
    "LocalLauncher",
    "Setting",
    "SweepDir",
    "Vary",
    "default_devices",
    "expand",
    "pareto",
    "parse_devices",
    "parse_vary",
    "run_job",
    "slots",
    "split_top_level",
    "write_summary",
]
