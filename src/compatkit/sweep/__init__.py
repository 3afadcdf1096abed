"""Sweeps: a grid of runs sharing providers, resumable as a whole, summarised as a front of
compatibility against plasticity (``compatkit sweep``).

- :mod:`~compatkit.sweep.grid`: ``--vary`` options to settings (one per method, deduplicated);
- :mod:`~compatkit.sweep.execute`: the sweep directory, jobs, processes, resume;
- :mod:`~compatkit.sweep.summary`: the summary table and the compatibility/plasticity front.
"""

from __future__ import annotations

from .execute import Job, SweepDir, run_job
from .grid import Setting, Vary, expand, parse_vary, split_top_level
from .summary import pareto, write_summary

__all__ = [
    "Job",
    "Setting",
    "SweepDir",
    "Vary",
    "expand",
    "pareto",
    "parse_vary",
    "run_job",
    "split_top_level",
    "write_summary",
]
