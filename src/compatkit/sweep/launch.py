"""Launchers: where the jobs of a sweep run. One small interface, two implementations.

- :class:`LocalLauncher` (``--launcher local``, the default): this machine, ``--jobs N``
  processes, each job on a device of its own (:mod:`~compatkit.sweep.devices`);
- :class:`~compatkit.sweep.cluster.SubmititLauncher` (``--launcher submitit``): SLURM (or
  submitit's local executor) through ``submitit``.

Both run the same functions (:func:`~compatkit.sweep.execute.train_providers`, then
:func:`~compatkit.sweep.execute.run_job` per job) on the same sweep directory, so a sweep
gives the same numbers through either, and either can continue what the other started.
"""

from __future__ import annotations

import abc
import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from ..runtime.layout import RunDir
from .devices import slots
from .execute import run_job, train_providers
from .index import Job

__all__ = ["Failure", "Launcher", "LocalLauncher", "OnDone", "provider_work"]

OnDone = Callable[[Job, dict[str, Any]], None]
"""Called in the sweep process as each job finishes, with its ``done.json`` content."""


@dataclass(frozen=True)
class Failure:
    """A job that ended without finishing: what happened, and where its log is."""

    job: Job | None
    """None: the providers job."""
    state: str
    message: str
    log: str | None = None


def provider_work(jobs: list[Job]) -> tuple[list[dict[str, Any]], list[str]]:
    """The configurations and run directories whose providers the jobs need (one per
    setting; providers shared by settings are trained once, then found in the cache)."""
    seen: dict[str, Job] = {}
    for j in jobs:
        seen.setdefault(j.setting, j)
    return [j.config for j in seen.values()], [j.dir for j in seen.values()]


class Launcher(abc.ABC):
    """Runs the providers, then the jobs, of a sweep."""

    name: str = ""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line: where and how the jobs will run."""

    def check(self) -> None:  # noqa: B027  (most launchers have nothing to check)
        """Refuse, before anything is written, what cannot run here (a missing scheduler)."""

    @abc.abstractmethod
    def providers(self, jobs: list[Job]) -> None:
        """Train every provider ``jobs`` need, before any of them starts."""

    @abc.abstractmethod
    def run(self, jobs: list[Job], on_done: OnDone) -> list[Failure]:
        """Run ``jobs``; call ``on_done`` as each finishes; return those that did not."""


# ---------------------------------------------------------------------------- local


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


class LocalLauncher(Launcher):
    """This machine: ``jobs_n`` jobs at once, in worker processes (one job: in this process).

    Each slot is one worker process with one device (:func:`~compatkit.sweep.devices.slots`);
    a job is handed a free slot, so with as many jobs as devices no two jobs share a GPU. A
    failed job stops the sweep (nothing more is started) and its error is the sweep's, unless
    ``keep_going``: then the failure is collected, the other jobs run, and the failures are
    returned (a training that diverges for one seed is a result of the grid, not a reason to
    leave the rest of it unrun).
    """

    name = "local"

    def __init__(
        self, jobs_n: int, threads: int, devices: list[str], keep_going: bool = False
    ) -> None:
        self.jobs_n = jobs_n
        self.threads = threads
        self.slots = slots(jobs_n, devices)
        self.keep_going = keep_going

    def describe(self) -> str:
        where = ", ".join(d for d in dict.fromkeys(self.slots) if d) or "the config's device"
        return (
            f"local: {self.jobs_n} job(s) at once, {self.threads} torch thread(s) each, on {where}"
        )

    def providers(self, jobs: list[Job]) -> None:
        configs, dirs = provider_work(jobs)
        train_providers(configs, dirs, self.slots[0], self.threads)

    def _failed(self, job: Job, e: Exception, failures: list[Failure]) -> None:
        if not self.keep_going:
            raise e
        failures.append(Failure(job, "failed", str(e), str(RunDir(job.dir).log)))

    def run(self, jobs: list[Job], on_done: OnDone) -> list[Failure]:
        failures: list[Failure] = []
        if self.jobs_n <= 1 or len(jobs) <= 1:
            for job in jobs:
                try:
                    done = run_job(job, self.threads, self.slots[0])
                except Exception as e:
                    self._failed(job, e, failures)
                    continue
                on_done(job, done)
            return failures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
        todo = list(jobs)
        free = list(range(min(self.jobs_n, len(jobs))))
        with contextlib.ExitStack() as stack:
            # one worker process per slot: a process keeps its device (one CUDA context each)
            pools = [
                stack.enter_context(
                    ProcessPoolExecutor(1, ctx, initializer=_init_worker, initargs=(self.threads,))
                )
                for _ in free
            ]
            running: dict[Future, tuple[Job, int]] = {}
            try:
                while todo or running:
                    while todo and free:
                        slot, job = free.pop(0), todo.pop(0)
                        fut = pools[slot].submit(run_job, job, self.threads, self.slots[slot])
                        running[fut] = (job, slot)
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        job, slot = running.pop(f)
                        free.append(slot)
                        try:
                            done = f.result()
                        except Exception as e:
                            self._failed(job, e, failures)
                            continue
                        on_done(job, done)
            except BaseException:
                for f in running:  # a failed job stops the sweep: start nothing more
                    f.cancel()
                raise
        return failures
