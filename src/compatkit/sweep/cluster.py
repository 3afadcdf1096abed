"""``--launcher submitit``: each (setting, seed) job submitted to SLURM through ``submitit``.

The sweep directory stays the single source of truth: a job is finished when its
``done.json`` exists, whatever the scheduler says. The launcher adds one file,
``DIR/launcher/submitit/jobs.json`` (which scheduler job last ran each sweep job), and
submitit's own folder ``DIR/launcher/submitit/logs/`` (each job's pickles, stdout and
stderr, named by its job id).

Running the same ``compatkit sweep`` command again

- keeps every job with a ``done.json`` (collected, never rerun);
- waits for a job the scheduler still runs or queues (``RUNNING``, ``PENDING``, a requeued
  one), or whose seed lock another process holds;
- resubmits every other unfinished job (failed, cancelled, timed out, preempted without
  requeue, killed, lost), which resumes from its last finished task.

A job that SLURM preempts or that reaches its time limit is checkpointed by submitit
(:meth:`SweepTask.checkpoint`) and requeued by it: the new attempt resumes from the last
finished task. Providers are trained by one job before the others are submitted.
``--cluster local`` runs the same path through submitit's local executor (real processes on
this machine, at most ``--jobs`` at a time, each on a device of its own); tests use it.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..runtime.files import atomic_write_json, read_json
from .cluster_options import ClusterOptions, require_submitit
from .devices import slots
from .execute import job_busy, read_done, run_job, train_providers
from .index import Job
from .launch import Failure, Launcher, OnDone, provider_work

__all__ = ["ALIVE", "SubmititLauncher", "SweepTask"]

ALIVE = frozenset(
    {"RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
     "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
)  # fmt: skip
"""SLURM states of a job that will still run or is running: wait for it, never resubmit."""

_JOB_ID = re.compile(r"[0-9]+(?:_[0-9]+)?")
"""A SLURM job id (``123``, an array task ``123_4``) or a local process id: nothing else
from ``jobs.json`` becomes part of a path."""

PROVIDERS_KEY = "providers"
RECORDS_FORMAT = 1


def _valid_entry(entry: Any) -> bool:
    """A jobs.json entry: a scheduler job id (checked: it becomes part of a log path)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("job_id"), str):
        return False
    attempts = entry.get("attempts", 0)
    return _JOB_ID.fullmatch(entry["job_id"]) is not None and isinstance(attempts, int)


@dataclass
class SweepTask:
    """What submitit runs: the providers, or one job; checkpointable, so that SLURM
    preemption and time limits requeue it (a requeued job resumes after its last task)."""

    job: Job | None
    providers: tuple[list[dict[str, Any]], list[str]] | None
    threads: int | None
    device: str | None
    cluster: str

    def _threads(self) -> int | None:
        import os

        if self.threads:
            return self.threads
        cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
        return int(cpus) if cpus.isdigit() and int(cpus) > 0 else None

    def __call__(self) -> Any:
        import submitit

        if self.providers is not None:
            return train_providers(*self.providers, self.device, self._threads())
        assert self.job is not None
        env = submitit.JobEnvironment()
        return run_job(
            self.job,
            self._threads(),
            self.device,
            launcher=f"submitit-{self.cluster}",
            extra={"job_id": str(env.job_id)},
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue the same work: everything it finished is on disk (task checkpoints)."""
        import submitit

        if self.job is not None:
            from ..runtime.layout import RunDir
            from ..runtime.log import RunLog

            log = RunLog(RunDir(self.job.dir).log, quiet=True, live=False)
            log.info(
                f"{self.job.method} seed {self.job.seed}: preempted or out of time; requeued, "
                "it resumes after its last finished task"
            )
            log.close()
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class _Watch:
    """A job being waited for: through its submitit handle, or (a job started by an earlier
    sweep process whose handle is gone) through the seed lock its process holds."""

    job: Job | None
    handle: Any = None
    slot: int | None = None

    def finished(self) -> bool:
        if self.handle is not None:
            return bool(self.handle.done())
        assert self.job is not None
        return job_busy(self.job) is None

    def failure(self) -> Failure | None:
        """Why it ended without its result (None: it succeeded)."""
        h = self.handle
        if h is None:
            assert self.job is not None
            return Failure(self.job, "ENDED", "the process that ran it ended without finishing")
        log = str(h.paths.stderr)
        if h.paths.result_pickle.exists():
            err = h.exception()
            if err is None:
                return None
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            return Failure(self.job, "FAILED", lines[-1] if lines else type(err).__name__, log)  # type: ignore[arg-type]
        state = h.state
        said = "" if state in ("FINISHED", "COMPLETED", "UNKNOWN") else f" (state {state})"
        msg = (
            f"ended without a result{said}: killed, cancelled, out of memory or time, or its "
            "node failed"
        )
        return Failure(self.job, state, msg, log)  # type: ignore[arg-type]


class SubmititLauncher(Launcher):
    """Jobs submitted through submitit to SLURM (``--cluster slurm``) or to local processes
    (``--cluster local``); see the module doc for resubmission."""

    name = "submitit"

    def __init__(
        self,
        sweep_path: Path,
        options: ClusterOptions,
        threads: int | None,
        jobs_n: int,
        devices: list[str],
        say: Callable[[str], None],
    ) -> None:
        self.submitit = require_submitit()
        self.options = options
        self.threads = threads
        self.root = sweep_path / "launcher" / "submitit"
        self.records_path = self.root / "jobs.json"
        self.logs = self.root / "logs"  # submitit's files, named by job id
        self.local = options.cluster == "local"
        # at once: --jobs on this machine; SLURM's array throttle (or all) on a cluster
        self.max_running = jobs_n if self.local else None
        # on SLURM a job without a GPU runs on the CPU; with GPUs, on those SLURM allocated
        no_gpu = not self.local and not options.gpus_per_job
        self.slots = slots(jobs_n, devices) if self.local else ["cpu" if no_gpu else None]
        # whether this process resolves the device the jobs will (to tell which providers
        # are cached: a provider's recipe holds the precision, which follows the device)
        self.same_device = self.local or no_gpu
        self.say = say
        self._executor: Any = None

    def describe(self) -> str:
        o = self.options
        if self.local:
            where = ", ".join(d for d in dict.fromkeys(self.slots) if d) or "the config's device"
            return (
                f"submitit (local processes): {self.max_running} job(s) at once on {where}, "
                f"time limit {o.time_min} min"
            )
        return f"submitit (SLURM): {o.describe()}"

    # ------------------------------------------------------------------ submitit
    def check(self) -> None:
        """Refuse, before anything is written, a scheduler this machine cannot reach."""
        if not self.local and shutil.which("sbatch") is None:
            raise InputError(
                "--cluster slurm: no SLURM here (sbatch not found on PATH); use "
                "--cluster local to run the jobs as processes of this machine"
            )

    def executor(self) -> Any:
        if self._executor is None:
            self.check()
            ex = self.submitit.AutoExecutor(folder=self.logs, cluster=self.options.cluster)
            ex.update_parameters(**self.options.executor_parameters())
            self._executor = ex
        return self._executor

    def _load(self) -> dict[str, Any]:
        empty = {"format": RECORDS_FORMAT, "cluster": self.options.cluster, "jobs": {}}
        if not self.records_path.is_file():
            return empty
        rec = read_json(self.records_path, "launcher record")
        ok = isinstance(rec, dict) and rec.get("format") == RECORDS_FORMAT
        jobs = rec.get("jobs") if ok else None
        if not isinstance(jobs, dict) or not all(map(_valid_entry, jobs.values())):
            raise InputError(
                f"launcher record {self.records_path}: not a compatkit submitit record; delete "
                "it to resubmit every unfinished job (jobs still running are found by their lock)"
            )
        if rec.get("cluster") != self.options.cluster:
            return {**empty, "jobs": {}}  # another scheduler's ids mean nothing here
        return rec

    def _save(self, rec: dict[str, Any]) -> None:
        atomic_write_json(self.records_path, rec)

    def _reattach(self, job: Job | None, entry: dict[str, Any] | None) -> _Watch | None:
        """A watch on a job started by an earlier sweep process, if it still runs."""
        if job is not None and job_busy(job):
            return _Watch(job)
        if entry is None or self.local:  # a local process of an earlier sweep: its lock only
            return None
        ex = self.executor()
        handle = ex._executor.job_class(folder=self.logs, job_id=entry["job_id"])
        return _Watch(job, handle) if handle.state in ALIVE else None

    def _submit(self, tasks: list[SweepTask]) -> list[Any]:
        ex = self.executor()
        if len(tasks) == 1:
            return [ex.submit(tasks[0])]
        with ex.batch():  # one SLURM array
            handles = [ex.submit(t) for t in tasks]
        return handles

    def _wait(self, watches: list[_Watch], poll: Callable[[_Watch], bool]) -> None:
        """Call ``poll`` on each watch until it returns True for all of them."""
        delay = 0.5 if self.local else 10.0  # s between checks (sacct is rate-limited)
        while watches:
            for w in list(watches):
                if poll(w):
                    watches.remove(w)
            if watches:
                time.sleep(delay)

    # ------------------------------------------------------------------ Launcher
    def providers(self, jobs: list[Job]) -> None:
        """One job trains the providers, unless this machine sees that all are cached."""
        from ..data.missing import DatasetNotFoundError
        from .plan import provider_status

        try:
            if self.same_device:
                states = [s for _, s in provider_status(jobs, self.slots[0]).values()]
                if "train" not in states:
                    return
        except DatasetNotFoundError:  # the data may be on the nodes only
            pass
        rec = self._load()
        watch = self._reattach(None, rec["jobs"].get(PROVIDERS_KEY))
        if watch is None:
            task = SweepTask(
                None, provider_work(jobs), self.threads, self.slots[0], self.options.cluster
            )
            (handle,) = self._submit([task])
            rec["jobs"][PROVIDERS_KEY] = {"job_id": str(handle.job_id), "attempts": 1}
            self._save(rec)
            watch = _Watch(None, handle)
            self.say(f"providers: job {handle.job_id} submitted")
        self._wait([watch], lambda w: w.finished())
        failure = watch.failure()
        if failure is not None:
            raise InputError(
                f"the providers job failed: {failure.message} (log: {failure.log}); fix the "
                "cause and run the same command again"
            )

    def run(self, jobs: list[Job], on_done: OnDone) -> list[Failure]:
        rec = self._load()
        failures: list[Failure] = []
        watches: list[_Watch] = []
        todo: list[Job] = []
        for job in jobs:
            w = self._reattach(job, rec["jobs"].get(job.key))
            if w is not None:
                watches.append(w)
            else:
                todo.append(job)
        if watches:
            self.say(f"{len(watches)} job(s) still running from an earlier invocation: waiting")
        free = list(range(len(self.slots)))
        for w in watches:  # an earlier sweep's local process holds a slot until it ends
            if self.local and free:
                w.slot = free.pop()

        def submit_more() -> None:
            n = len(todo) if self.max_running is None else min(len(todo), len(free))
            if n <= 0:
                return
            batch, taken = todo[:n], [free.pop(0) for _ in range(n)] if self.local else [None] * n
            del todo[:n]
            tasks = [
                SweepTask(j, None, self.threads, self.slots[s] if s is not None else None,
                          self.options.cluster)
                for j, s in zip(batch, taken, strict=True)
            ]  # fmt: skip
            for j, s, h in zip(batch, taken, self._submit(tasks), strict=True):
                attempts = int(rec["jobs"].get(j.key, {}).get("attempts", 0)) + 1
                rec["jobs"][j.key] = {"job_id": str(h.job_id), "attempts": attempts}
                watches.append(_Watch(j, h, s))
            self._save(rec)
            self.say(
                f"submitted {n} job(s): "
                + ", ".join(f"{j.label} as {rec['jobs'][j.key]['job_id']}" for j in batch)
            )

        def poll(w: _Watch) -> bool:
            assert w.job is not None
            if w.job.seed_dir.joinpath("done.json").is_file() and w.finished():
                on_done(w.job, read_done(w.job.seed_dir / "done.json"))
            elif w.finished():
                f = w.failure()
                if f is None:  # a result but no done.json: the record vanished meanwhile
                    f = Failure(w.job, "LOST", "finished, but its done.json is missing")
                failures.append(f)
            else:
                return False
            if w.slot is not None:
                free.append(w.slot)
            submit_more()
            return True

        submit_more()
        try:
            self._wait(watches, poll)
        except KeyboardInterrupt:
            self.say(
                "interrupted: submitted jobs that were not stopped with this command keep "
                "running; the same command collects them, or resubmits them"
            )
            raise
        return failures
