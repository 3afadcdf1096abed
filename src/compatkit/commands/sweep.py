"""``compatkit sweep CONFIG --vary KEY=V1,V2,... [--vary ...] --out DIR``: a grid of runs.

Every combination of the ``--vary`` values is a grid point; each method of a point is a
setting with its own run directory, and each seed of a setting is one job. Providers are
shared. Running the same command again continues a killed sweep (finished jobs are kept, an
interrupted one resumes from its last task); a later command into the same DIR adds its
settings (for instance more seeds) to the same summary. Jobs run here (``--launcher local``,
one device each) or on a cluster (``--launcher submitit``). See ``compatkit.sweep``.
"""

from __future__ import annotations

import argparse
import sys

from . import add_log_argument, add_set_argument

HELP = "run a grid of settings (resumable, on every GPU or a cluster) and plot the front"

EXIT_UNFINISHED = 3
"""Some jobs ended without finishing (a cluster job failed, was killed or lost): run the
same command again to resubmit them."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        nargs="?",
        help="a config file, or the name of a shipped config (default: fashion; "
        "`compatkit configs` lists them)",
    )
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="values of one config key, as YAML; commas inside [...] do not split, so "
        "seeds=[42],[43] or local.data.classes=[1,3],[4,5] work (repeatable: the grid is the "
        "product)",
    )
    add_set_argument(p, " for every grid point")
    p.add_argument("--out", required=True, help="the sweep directory (created, or continued)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="jobs at once, each in its own process (default: one per device of --devices, else 1)",
    )
    p.add_argument(
        "--devices",
        default=None,
        metavar="LIST",
        help="GPUs for the jobs, one job per device at a time: 0,1,2,3 or cuda:0,cuda:1, or "
        "cpu (default: every visible GPU when the config's device is auto or cuda, else the "
        "config's device)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch threads per job (default: num_workers_threads of the config, or the "
        "available cores divided by --jobs; on SLURM, --cpus-per-job)",
    )
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="when a job fails (a training that diverges), run the other jobs and list the "
        "failures at the end (exit 3) instead of stopping the sweep (a cluster sweep always "
        "goes on)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the grid, the jobs left to run and the providers to train; write nothing",
    )
    add_log_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    c = p.add_argument_group(
        "cluster (--launcher submitit)",
        "each (setting, seed) is one job; the same command again collects the finished ones "
        "and resubmits the others. Defaults come from --launcher-config FILE (a submitit: "
        "block), then these flags.",
    )
    c.add_argument(
        "--launcher",
        choices=("local", "submitit"),
        default=None,
        help="local: processes of this machine (the default); submitit: SLURM through "
        "submitit (the default when a cluster option below is given)",
    )
    c.add_argument(
        "--cluster",
        choices=("slurm", "local"),
        default=None,
        help="submitit's executor: slurm (default) or local (real processes on this machine, "
        "the same path as on SLURM)",
    )
    c.add_argument("--launcher-config", metavar="FILE", help="YAML file with a submitit: block")
    c.add_argument("--partition", help="SLURM partition")
    c.add_argument("--time-min", type=int, metavar="MIN", help="time limit per job (default 240)")
    c.add_argument("--gpus-per-job", type=int, metavar="G", help="GPUs per job (default 0)")
    c.add_argument("--cpus-per-job", type=int, metavar="C", help="CPUs per job")
    c.add_argument("--mem-gb", type=float, metavar="GB", help="memory per job")
    c.add_argument("--array-parallelism", type=int, metavar="K", help="array tasks running at once")
    c.add_argument("--account", help="SLURM account")
    c.add_argument("--qos", help="SLURM quality of service")
    c.add_argument("--constraint", help="SLURM node constraint (e.g. a100)")
    c.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. --slurm exclude=node01 (repeatable)",
    )


CLUSTER_FLAGS = (
    "cluster", "partition", "time_min", "gpus_per_job", "cpus_per_job", "mem_gb",
    "array_parallelism", "account", "qos", "constraint",
)  # fmt: skip


def _check_flags(args: argparse.Namespace) -> None:
    from ..errors import InputError

    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    given = [k for k in CLUSTER_FLAGS if getattr(args, k) is not None]
    given += ["launcher_config"] * bool(args.launcher_config) + ["slurm"] * bool(args.slurm)
    if args.launcher == "local" and given:
        raise InputError(f"--{given[0].replace('_', '-')} needs --launcher submitit")
    if args.launcher is None:  # a cluster option says which launcher is meant
        args.launcher = "submitit" if given else "local"


def _launcher(args, sweep, settings, say):
    """The launcher of this invocation, its flags checked (nothing is started)."""
    import torch

    from ..errors import InputError
    from ..sweep.devices import default_devices, parse_devices
    from ..sweep.execute import default_threads
    from ..sweep.launch import LocalLauncher

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.devices is not None:
        devices = parse_devices(args.devices, cuda)
    else:
        devices = default_devices(settings[0].config["device"], cuda)
    jobs_n = args.jobs or (len(devices) if devices and devices != ["cpu"] else 1)
    threads = args.threads or settings[0].config.get("num_workers_threads") or None
    if args.launcher == "local":
        return LocalLauncher(
            jobs_n, threads or default_threads(jobs_n), devices, keep_going=args.keep_going
        )
    from ..sweep.cluster import SubmititLauncher
    from ..sweep.cluster_options import cluster_options

    extra = {}
    for item in args.slurm:
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"--slurm expects KEY=VALUE, got {item!r}")
        extra[key.strip()] = value.strip()
    flags = {k: getattr(args, k) for k in CLUSTER_FLAGS}
    flags["slurm"] = extra or None
    options = cluster_options(args.launcher_config, flags)
    if options.cluster == "local":
        threads = threads or default_threads(jobs_n)
    elif args.devices is not None:
        raise InputError("--devices applies on this machine; on SLURM use --gpus-per-job")
    return SubmititLauncher(sweep.path, options, threads, jobs_n, devices, say)


def main(args: argparse.Namespace) -> int:
    """The sweep; ``--log`` reaches every job (in this process or a worker) through
    ``$COMPATKIT_LOG``, set for the sweep's duration only."""
    import os

    from ..tracking import ENV_VAR, check_backends

    if not args.log:
        return _sweep(args)
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = ",".join(check_backends(args.log))
    try:
        return _sweep(args)
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def _sweep(args: argparse.Namespace) -> int:
    _check_flags(args)

    from ..config import resolve_config
    from ..sweep.execute import command_line, job_busy
    from ..sweep.grid import expand, parse_vary
    from ..sweep.index import SweepDir
    from ..sweep.plan import status_line
    from ..sweep.summary import write_summary

    vary = parse_vary(args.vary)
    config = resolve_config(args.config)
    settings = expand(config, args.overrides, vary)
    sweep = SweepDir(args.out)

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    launcher = _launcher(args, sweep, settings, say)
    if args.dry_run:
        from ..sweep.plan import dry_run

        return dry_run(sweep, settings, config, vary, launcher, command_line(), say)

    from ..errors import InputError

    launcher.check()
    with sweep.lock():
        sweep.add(settings, command_line())
        pending, finished = sweep.jobs(settings)
        say(status_line(sweep, settings, pending, finished))
        busy = [(j, who) for j in pending if (who := job_busy(j))]
        if busy and launcher.name == "local":
            j, who = busy[0]
            raise InputError(
                f"{len(busy)} job(s) of this sweep are still running in other processes "
                f"({j.label}: {who}); wait for them, or stop them, and run the command again"
            )
        if pending:
            say(f"launcher: {launcher.describe()}")
            launcher.providers(pending)
            say("providers ready")
        total, count = len(pending), [0]

        def on_done(job, done) -> None:
            count[0] += 1
            local = done.get("local_final")
            say(
                f"[{count[0]}/{total}] {job.label}: AC {done['AC']:.2f}  AM {done['AM']:.2f}"
                + (f"  final local acc. {local:.1f}" if local is not None else "")
                + f"  ({done['seconds']:.0f} s on {done.get('device', '?')})"
            )
            _assemble_if_complete(sweep, job)

        failures = launcher.run(pending, on_done)
        firsts = {j.setting: j for j in reversed(pending + finished)}
        for job in firsts.values():  # settings finished by an earlier invocation
            _assemble_if_complete(sweep, job)
        payload = write_summary(sweep.path, sweep.index)
    _print_summary(payload, sweep)
    if failures:
        print(f"compatkit sweep: {len(failures)} of {total} jobs did not finish:", file=sys.stderr)
        for f in failures:
            log = f" (log: {f.log})" if f.log else ""
            print(f"  {f.job.label}: {f.message}{log}", file=sys.stderr)
        print(
            "run the same command again to resubmit them (finished jobs are kept)",
            file=sys.stderr,
        )
        return EXIT_UNFINISHED
    return 0


def _assemble_if_complete(sweep, job) -> None:
    """Assemble ``job``'s setting when all its seeds are done and its metrics.json is not
    already those seeds' (a damaged metrics.json is refused in one line, with the fix)."""
    from ..errors import InputError
    from ..runtime.files import read_json
    from ..runtime.layout import RunDir
    from ..sweep.execute import assemble
    from ..sweep.summary import REBUILD

    entry = sweep.index["settings"][job.setting]
    done = sweep.done_seeds(job.setting)
    if len(done) < len(entry["seeds"]):
        return
    dirs = RunDir(job.dir)
    if dirs.metrics.is_file() and dirs.report.is_file():
        try:
            meta = read_json(dirs.metrics, "setting results")
            seeds = meta.get("_meta", {}).get("seeds") if isinstance(meta, dict) else None
        except InputError as e:
            raise InputError(f"{e}; {REBUILD}") from None
        if isinstance(seeds, list) and sorted(map(str, seeds)) == sorted(map(str, done)):
            return
    assemble(job, done)


def _print_summary(payload: dict, sweep) -> None:
    from ..report.table import fmt_stat

    for r in payload["rows"]:
        vals = " ".join(f"{k.split('.')[-1]}={v}" for k, v in r["values"].items() if v is not None)
        front = [c for c in ("AM", "AC") if r["front"][c]]
        print(
            f"{r['method']:8s} {vals:40s} n={len(r['seeds'])}  AC {fmt_stat(r['stats']['AC'])}  "
            f"AM {fmt_stat(r['stats']['AM'])}  final local acc. "
            f"{fmt_stat(r['stats']['local_final'])}"
            + (f"  front: {'+'.join(front)}" if front else "")
        )
    for p in payload["pending"]:
        print(f"pending: {p['setting']}")
    print(f"summary: {sweep.path / 'summary.md'} (and summary.json, summary.csv, front.png)")
