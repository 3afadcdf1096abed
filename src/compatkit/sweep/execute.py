"""The work of a sweep: one job per (setting, seed), the providers before them, and the
assembly of a setting's results once all its seeds are done.

A job trains one method through every task for one seed (resuming after its last finished
task, so a job killed half-way continues where it stopped) and evaluates that seed, which
fills the feature caches; ``done.json`` marks it finished and records where it ran (device,
host, launcher). When every requested seed of a setting is done, the setting's
``metrics.json`` and report are assembled from the caches. These functions run wherever a
launcher puts them (this process, a worker process, a cluster node); each takes its
configuration as an argument, never from a file of the sweep directory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..config import RunConfig, build, validate
from ..errors import InputError
from ..runtime.files import atomic_write_json, file_lock, lock_held, read_json
from ..runtime.layout import RunDir
from .index import Job

__all__ = [
    "assemble",
    "command_line",
    "config_from_dict",
    "default_threads",
    "job_busy",
    "read_done",
    "run_job",
    "train_providers",
]

DONE_NUMBERS = ("AC", "AM", "local_final", "local_mean", "final_self", "seconds")


def config_from_dict(d: dict[str, Any]) -> RunConfig:
    """A setting's effective configuration (a plain mapping) as a checked RunConfig."""
    cfg = build(RunConfig, d)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------- one job


def _seed_lock(job: Job, wait_s: float = 10.0) -> contextlib.AbstractContextManager:
    """Hold ``job``'s seed lock or refuse: one process trains a seed at a time. Waits up to
    ``wait_s`` seconds, so that a sweep checking the lock as a job starts does not fail it."""
    seed_dir = job.seed_dir

    def refuse() -> InputError:
        who = _holder(seed_dir / "job.json")
        return InputError(f"{seed_dir}: another process is running this job ({who})")

    return file_lock(RunDir(job.dir).job_lock(job.method, job.seed), wait_s, refuse)


def _holder(job_record: Path) -> str:
    try:
        rec = read_json(job_record)
        return f"pid {int(rec['pid'])} on {str(rec['host'])[:100]}"
    except (InputError, KeyError, TypeError, ValueError):
        return "see its job.json"


def job_busy(job: Job) -> str | None:
    """Who holds ``job``'s seed lock right now ("pid N on HOST"), or None when nobody does."""
    if not lock_held(RunDir(job.dir).job_lock(job.method, job.seed)):
        return None
    return _holder(job.seed_dir / "job.json")


def _where(device: str, launcher: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Where a job runs, as recorded in job.json and done.json."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # "cuda": the current one, by number
        dev = torch.device("cuda", torch.cuda.current_device())
    out: dict[str, Any] = {"device": str(dev)}
    if dev.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(dev)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            out["cuda_visible_devices"] = visible
    out.update(host=socket.gethostname(), launcher=launcher, **(extra or {}))
    return out


def run_job(
    job: Job,
    threads: int | None = None,
    device: str | None = None,
    launcher: str = "local",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume) one method and seed of a setting, evaluate it, write ``done.json``.

    ``device`` (``cuda:2``) replaces the config's device for this job only: it decides where
    the job computes, not what (it is not part of the setting). ``done.json`` records the
    device actually used, the host, the launcher and ``extra`` (a cluster's job id).
    """
    import torch

    from ..protocol.experiment import run_experiment
    from ..runtime.device import resolve_device
    from ..runtime.log import RunLog

    dirs = RunDir(job.dir)
    with _seed_lock(job):
        cfg = config_from_dict({**job.config, "seeds": [job.seed]})
        if device:
            cfg.device = device
        if threads:
            cfg.num_workers_threads = threads
            torch.set_num_threads(threads)
        where = _where(str(resolve_device(cfg.device)), launcher, extra)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        record = {"setting": job.setting, "seed": job.seed, **where, "pid": os.getpid()}
        atomic_write_json(dirs.job(job.method, job.seed), {**record, "started": started})
        t0 = time.perf_counter()
        log = RunLog(dirs.log, quiet=True, live=False)
        try:
            # providers are trained before any job starts (train_providers)
            results = run_experiment(
                cfg, dirs.root, log=log, methods=[job.method], records=False, write=False
            )
        except Exception as e:  # recorded for `sweep` summaries and reports, then raised
            ended = time.strftime("%Y-%m-%d %H:%M:%S")
            failed = {**record, "started": started, "ended": ended, "failed": str(e)}
            atomic_write_json(dirs.job(job.method, job.seed), failed)
            raise
        finally:
            log.close()
        res = results[job.method]
        done = {
            "seed": job.seed,
            "seconds": round(time.perf_counter() - t0, 1),
            **{k: res.get(k) for k in ("AC", "AM", "local_final", "local_mean", "final_self")},
            **where,
            "started": started,
        }
        atomic_write_json(dirs.done(job.method, job.seed), done)
    return done


def read_done(path: Path) -> dict[str, Any]:
    """A job's ``done.json``, checked: a damaged one is one line that says how to redo it."""
    fix = "delete it and run the sweep again: that seed is evaluated again from its checkpoints"
    try:
        done = read_json(path, "job record")
    except InputError as e:
        raise InputError(f"{e}; {fix}") from None
    ok = isinstance(done, dict) and all(
        done.get(k) is None or (isinstance(done[k], (int, float)) and not isinstance(done[k], bool))
        for k in DONE_NUMBERS
    )
    if not ok or not all(isinstance(done.get(k, ""), str) for k in ("device", "host")):
        raise InputError(f"job record {path}: not a compatkit job record; {fix}")
    return done


def train_providers(
    configs: list[dict[str, Any]],
    run_dirs: list[str],
    device: str | None = None,
    threads: int | None = None,
) -> int:
    """Train (or check) every provider the given settings need, once; returns how many
    settings were checked. ``device`` must be the jobs' device: a provider's recipe holds the
    precision, which follows the device."""
    import torch

    from ..protocol.experiment import Experiment
    from ..runtime.log import RunLog

    if threads:
        torch.set_num_threads(threads)
    for config, run_dir in zip(configs, run_dirs, strict=True):
        cfg = config_from_dict(config)
        if device:
            cfg.device = device
        log = RunLog(RunDir(run_dir).log, quiet=True, live=False)
        try:
            Experiment(cfg, run_dir, log).providers.ensure()
        finally:
            log.close()
    return len(configs)


def assemble(job: Job, seeds: list[int]) -> dict[str, Any]:
    """``metrics.json`` and the report of ``job``'s setting from its evaluated ``seeds``
    (cached features); ``_meta`` gains each seed's wall time, device and host."""
    from ..protocol.experiment import run_experiment
    from ..runtime.log import RunLog

    dirs = RunDir(job.dir)
    cfg = config_from_dict({**job.config, "seeds": list(seeds)})
    done = [read_done(dirs.done(job.method, s)) for s in seeds]
    meta = {
        "seconds_per_seed": [d.get("seconds") for d in done],
        "device_per_seed": [d.get("device") for d in done],
        "host_per_seed": [d.get("host") for d in done],
    }
    log = RunLog(dirs.log, quiet=True, live=False)
    try:
        return run_experiment(cfg, dirs.root, log=log, train=False, records=True, meta=meta)
    finally:
        log.close()


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
