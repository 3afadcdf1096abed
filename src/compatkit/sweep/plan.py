"""``compatkit sweep --dry-run``: the grid, the jobs and the providers, with nothing written.

The index is merged in memory only; the sweep directory, its lock and the providers cache
are left as they are (a missing directory stays missing), and no data is downloaded: the
providers are checked against the data found on this machine, or reported as not checked.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .execute import config_from_dict
from .grid import Setting, Vary
from .index import Job, SweepDir
from .launch import Launcher, provider_work

__all__ = ["dry_run", "provider_lines", "provider_status", "status_line"]


def status_line(
    sweep: SweepDir, settings: list[Setting], pending: list[Job], done: list[Job]
) -> str:
    """``sweep DIR: N settings (methods) x seeds [...]: k of n runs already finished``."""
    seeds = sorted({j.seed for j in pending + done})
    return (
        f"sweep {sweep.path}: {len(settings)} settings "
        f"({', '.join(sorted({s.method for s in settings}))}) x seeds {seeds}: "
        f"{len(done)} of {len(pending) + len(done)} runs already finished"
    )


def _offline(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every dataset's download turned off (a dry run fetches nothing)."""
    c = copy.deepcopy(config)
    sources = [c["local"]["data"], c["eval"]["query"], c["eval"]["gallery"]]
    sources += [p["data"] for p in c.get("providers", [])]
    for src in sources:
        src["download"] = False
    return c


def provider_status(pending: list[Job], device: str | None) -> dict[str, tuple[str, str]]:
    """``{file: (label, state)}`` of every provider the pending jobs need, ``state`` one of
    ``cached``, ``configured``, ``train``; checked on this machine's data, with nothing
    written or downloaded (a DatasetNotFoundError when the data is not here)."""
    from ..protocol.experiment import Experiment
    from ..runtime.log import RunLog

    rows: dict[str, tuple[str, str]] = {}
    for config, run_dir in zip(*provider_work(pending), strict=True):
        cfg = config_from_dict(_offline(config))
        if device:
            cfg.device = device
        exp = Experiment(cfg, run_dir, RunLog(None, quiet=True, live=False))
        for (i, head), state in exp.providers.check(create_folder=False).items():
            name = cfg.providers[i].name or f"provider{i}"
            rows.setdefault(str(exp.providers.path(i, head)), (f"{name} ({head})", state))
    return rows


def provider_lines(pending: list[Job], device: str | None) -> list[str]:
    """What the pending jobs need of providers: each provider file, cached or to train."""
    from ..data.missing import DatasetNotFoundError

    if not pending:
        return ["providers: none needed (no job to run)"]
    try:
        rows = provider_status(pending, device)
    except DatasetNotFoundError as e:
        why = " ".join(str(e).split())
        return [f"providers: not checked, their data is not on this machine ({why})"]
    states = [s for _, s in rows.values()]
    lines = [
        f"providers: {states.count('train')} to train, {states.count('cached')} cached, "
        f"{states.count('configured')} configured"
    ]
    for path, (label, state) in rows.items():
        lines.append(f"  {label}: {'to train' if state == 'train' else state}  {path}")
    return lines


def dry_run(
    sweep: SweepDir,
    settings: list[Setting],
    config: Path,
    vary: list[Vary],
    launcher: Launcher,
    argv: list[str],
    say: Callable[[str], None],
) -> int:
    """Print what the command would do; write nothing. Returns the exit status (0)."""
    sweep.add(settings, argv, write=False)
    pending, finished = sweep.jobs(settings)
    say(status_line(sweep, settings, pending, finished))
    points = 1
    for v in vary:
        points *= len(v.values)
    print(f"config: {config}")
    print(f"grid: {points} point(s)" + ("" if vary else " (no --vary)"))
    for v in vary:
        print(f"  {v.key}: {', '.join(v.values)}")
    print(f"settings: {len(settings)}")
    for s in settings:
        left = [j.seed for j in pending if j.setting == s.hash]
        print(
            f"  {sweep.setting_dir(s).name}: " + (f"to run: seeds {left}" if left else "finished")
        )
    print(f"jobs: {len(pending)} to run, {len(finished)} finished; {launcher.describe()}")
    device = getattr(launcher, "slots", [None])[0]
    for line in provider_lines(pending, device):
        print(line)
    print(f"dry run: nothing written ({'new' if not sweep.exists else 'existing'} {sweep.path})")
    return 0
