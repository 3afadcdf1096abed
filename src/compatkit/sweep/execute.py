"""Running a sweep: one run directory per setting, one job per (setting, seed), resumable.

Layout of a sweep directory::

    DIR/sweep.json                 the index: every invocation's command and settings
    DIR/runs/<setting>/            a normal compatkit run (config.yaml, metrics.json, report.md)
    DIR/runs/<setting>/<method>/seed_<s>/done.json   written when that seed is evaluated
    DIR/summary.{md,json,csv}, DIR/front.png

Providers are shared by every setting through the providers cache every run uses (the
config's ``providers_dir``, else ``$COMPATKIT_CACHE/providers``), trained once before any job.

A job trains one method through every task for one seed (``Runner.run_sequence`` with
resume, so a job killed half-way continues from its last finished task) and evaluates that
seed, which fills the feature caches; ``done.json`` marks it finished. When every requested
seed of a setting is done, the setting's ``metrics.json`` and report are assembled from the
caches. A sweep killed at any point is continued by running the same command again: finished
jobs are not redone. ``--jobs N`` runs jobs in N processes, each with its own torch threads;
a worker whose sweep process died stops within a second, so a restarted sweep never races it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..runtime.files import atomic_write_text, read_json
from ..runtime.layout import RunDir
from .grid import Setting

__all__ = ["INDEX", "Job", "SweepDir", "run_job"]

INDEX = "sweep.json"
FORMAT = 1


@dataclass(frozen=True)
class Job:
    """One seed of one setting."""

    setting: str
    """The setting's hash."""
    dir: str
    method: str
    seed: int


class SweepDir:
    """A sweep directory: its index, its settings' run directories, its lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.runs = self.path / "runs"
        self.index_path = self.path / INDEX
        self.index: dict[str, Any] = {"format": FORMAT, "invocations": [], "settings": {}}
        if self.index_path.is_file():
            try:
                self.index = json.loads(self.index_path.read_text(encoding="utf-8"))
            except (ValueError, OSError) as e:
                raise InputError(f"{self.index_path}: not a readable sweep index ({e})") from e
            if not isinstance(self.index, dict) or self.index.get("format") != FORMAT:
                raise InputError(f"{self.index_path}: not a compatkit sweep index (format)")
        elif self.path.exists() and any(p.name != ".lock" for p in self.path.iterdir()):
            raise InputError(
                f"{self.path} exists and is not a sweep directory (no {INDEX}); "
                "choose another --out"
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``DIR/.lock`` (released by the kernel even when the process is killed)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / ".lock", "w")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(
                    f"another compatkit sweep is running in {self.path}; wait for it to finish"
                ) from None
            yield
        finally:
            fh.close()

    # ------------------------------------------------------------------ settings
    def setting_dir(self, s: Setting | dict) -> Path:
        """A setting's run directory, named when the setting was first added (a later
        invocation that varies other keys finds it by its hash, not by a new name)."""
        if isinstance(s, Setting):
            entry = self.index["settings"].get(s.hash)
            return self.runs / (entry["name"] if entry else s.name)
        return self.runs / s["name"]

    def add(self, settings: list[Setting], argv: list[str]) -> None:
        """Record an invocation; write or update each setting's config.yaml (seeds: union)."""
        known = self.index["settings"]
        for s in settings:
            entry = known.get(s.hash)
            if entry is None:
                entry = {"method": s.method, "name": s.name, "values": s.values, "seeds": []}
                known[s.hash] = entry
            else:  # another invocation's point of view: keep both sets of varied keys
                entry["values"] = {**s.values, **entry["values"]}
            seeds = entry["seeds"] + [x for x in s.seeds if x not in entry["seeds"]]
            entry["seeds"] = seeds
            d = self.setting_dir(entry)
            d.mkdir(parents=True, exist_ok=True)
            cfg = {**s.config, "seeds": seeds}
            atomic_write_text(RunDir(d).config, yaml.safe_dump(cfg, sort_keys=False))
        self.index["invocations"].append(
            {
                "command": "compatkit " + shlex.join(argv),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "settings": [s.hash for s in settings],
            }
        )
        self.save_index()

    def save_index(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.index_path, json.dumps(self.index, indent=1))

    def done_path(self, job: Job) -> Path:
        return RunDir(job.dir).done(job.method, job.seed)

    def jobs(self, hashes: list[str]) -> tuple[list[Job], list[Job]]:
        """``(pending, finished)`` jobs of the given settings, in grid order."""
        pending, finished = [], []
        for h in hashes:
            e = self.index["settings"][h]
            for seed in e["seeds"]:
                job = Job(h, str(self.setting_dir(e)), e["method"], int(seed))
                (finished if self.done_path(job).is_file() else pending).append(job)
        return pending, finished

    def done_seeds(self, h: str) -> list[int]:
        e = self.index["settings"][h]
        return [
            int(s)
            for s in e["seeds"]
            if self.done_path(Job(h, str(self.setting_dir(e)), e["method"], int(s))).is_file()
        ]


# ---------------------------------------------------------------------------- the work


def run_job(job: Job, threads: int | None = None) -> dict[str, Any]:
    """Train (or resume) one method and seed of a setting, evaluate it, write ``done.json``."""
    import torch

    from ..config import load_config
    from ..protocol.experiment import run_experiment
    from ..runtime.log import RunLog

    dirs = RunDir(job.dir)
    cfg = load_config(dirs.config)
    cfg.seeds = [job.seed]
    if threads:
        cfg.num_workers_threads = threads
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    log = RunLog(dirs.log, quiet=True, live=False)
    try:
        # providers are cached by the sweep before any job starts
        results = run_experiment(
            cfg, dirs.root, log=log, methods=[job.method], records=False, write=False
        )
    finally:
        log.close()
    res = results[job.method]
    done = {
        "seed": job.seed,
        "seconds": round(time.perf_counter() - t0, 1),
        **{k: res.get(k) for k in ("AC", "AM", "local_final", "local_mean", "final_self")},
    }
    atomic_write_text(dirs.done(job.method, job.seed), json.dumps(done))
    return done


def assemble(run_dir: Path, seeds: list[int]) -> dict[str, Any]:
    """``metrics.json`` and the report of a setting from its evaluated seeds (cached features)."""
    from ..config import load_config
    from ..protocol.experiment import run_experiment
    from ..runtime.log import RunLog

    dirs = RunDir(run_dir)
    cfg = load_config(dirs.config)
    cfg.seeds = list(seeds)
    secs = [read_json(dirs.done(cfg.methods[0], s)).get("seconds") for s in seeds]
    log = RunLog(dirs.log, quiet=True, live=False)
    try:
        return run_experiment(
            cfg, dirs.root, log=log, train=False, records=True, meta={"seconds_per_seed": secs}
        )
    finally:
        log.close()


def _watch_parent() -> None:
    """Worker side: exit as soon as the sweep process that started us is gone."""
    parent = os.getppid()

    def loop() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=loop, daemon=True).start()


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _watch_parent()


def execute(
    jobs: list[Job],
    jobs_n: int,
    threads: int,
    on_done: Callable[[Job, dict[str, Any]], None],
) -> None:
    """Run ``jobs`` in this process (``jobs_n`` 1) or in ``jobs_n`` worker processes."""
    if jobs_n <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(job, run_job(job, threads))
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(
        max_workers=min(jobs_n, len(jobs)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(threads,),
    ) as pool:
        futures = {pool.submit(run_job, job, threads): job for job in jobs}
        try:
            while futures:
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for f in finished:
                    job = futures.pop(f)
                    on_done(job, f.result())
        except BaseException:
            for f in futures:  # a failed job stops the sweep: start nothing more
                f.cancel()
            raise


def default_threads(jobs_n: int) -> int:
    """Torch threads per process: the cores this process may use, shared by the jobs."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs_n))


def command_line() -> list[str]:
    """The arguments this ``compatkit`` process was started with (for the sweep's record)."""
    return list(sys.argv[1:])
