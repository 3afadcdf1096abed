"""``compatkit sweep CONFIG --vary KEY=V1,V2,... [--vary ...] --out DIR``: a grid of runs.

Every combination of the ``--vary`` values is a grid point; each method of a point is a
setting with its own run directory, and each seed of a setting is one job. Providers are
shared. Running the same command again continues a killed sweep (finished jobs are kept, an
interrupted one resumes from its last task); a later command into the same DIR adds its
settings (for instance more seeds) to the same summary. See ``compatkit.sweep``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_log_argument, add_set_argument

HELP = "run a grid of settings (resumable) and plot compatibility against plasticity"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (default: configs/fashion.yaml)")
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
        default=1,
        metavar="N",
        help="runs at once, each in its own process (default 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch threads per process (default: num_workers_threads of the config, or the "
        "available cores divided by --jobs)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the settings and the jobs left to run, and exit",
    )
    add_log_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


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
    from ..errors import InputError

    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")

    from ..config import resolve_config
    from ..sweep.execute import SweepDir, command_line, default_threads, execute
    from ..sweep.grid import expand, parse_vary
    from ..sweep.summary import write_summary

    vary = parse_vary(args.vary)
    config = resolve_config(args.config)
    settings = expand(config, args.overrides, vary)
    sweep = SweepDir(args.out)

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    with sweep.lock():
        sweep.add(settings, command_line())
        hashes = [s.hash for s in settings]
        pending, finished = sweep.jobs(hashes)
        seeds = sorted({j.seed for j in pending + finished})
        say(
            f"sweep {sweep.path}: {len(settings)} settings "
            f"({', '.join(sorted({s.method for s in settings}))}) x seeds {seeds}: "
            f"{len(finished)} of {len(pending) + len(finished)} runs already finished"
        )
        if args.dry_run:
            for s in settings:
                left = [j.seed for j in pending if j.setting == s.hash]
                state = f"to run: seeds {left}" if left else "finished"
                print(f"{s.name}: {state}")
            return 0
        threads = args.threads
        if threads is None:
            from ..config import load_config

            threads = load_config(config, args.overrides).num_workers_threads or default_threads(
                args.jobs
            )
        _providers(sweep, settings, pending, say)
        total, count = len(pending), [0]

        def on_done(job, done) -> None:
            count[0] += 1
            entry = sweep.index["settings"][job.setting]
            local = done.get("local_final")
            say(
                f"[{count[0]}/{total}] {entry['name']} seed {job.seed}: AC {done['AC']:.2f}  "
                f"AM {done['AM']:.2f}"
                + (f"  final local acc. {local:.1f}" if local is not None else "")
                + f"  ({done['seconds']:.0f} s)"
            )
            _assemble_if_complete(sweep, job.setting)

        execute(pending, args.jobs, threads, on_done)
        for h in hashes:  # settings finished by an earlier, interrupted invocation
            _assemble_if_complete(sweep, h)
        payload = write_summary(sweep.path, sweep.index)
    _print_summary(payload, sweep.path)
    return 0


def _providers(sweep, settings, pending, say) -> None:
    """Train every provider the pending jobs need, once, before any job starts."""
    from ..config import load_config
    from ..protocol.experiment import Experiment
    from ..protocol.layout import RunDir
    from ..runtime.log import RunLog

    todo = {j.setting for j in pending}
    for s in settings:
        if s.hash not in todo:
            continue
        dirs = RunDir(sweep.setting_dir(s))
        log = RunLog(dirs.log, quiet=True, live=False)
        try:
            Experiment(load_config(dirs.config), dirs.root, log).providers.ensure()
        finally:
            log.close()
    if todo:
        say("providers ready")


def _assemble_if_complete(sweep, h: str) -> None:
    from ..protocol.layout import RunDir
    from ..runtime.files import read_json
    from ..sweep.execute import assemble

    entry = sweep.index["settings"][h]
    done = sweep.done_seeds(h)
    if len(done) < len(entry["seeds"]):
        return
    dirs = RunDir(sweep.setting_dir(entry))
    run_dir = dirs.root
    if dirs.metrics.is_file() and dirs.report.is_file():
        meta = read_json(dirs.metrics).get("_meta", {})
        if sorted(meta.get("seeds") or []) == sorted(done):
            return
    assemble(run_dir, done)


def _print_summary(payload: dict, path: Path) -> None:
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
    print(f"summary: {path / 'summary.md'} (and summary.json, summary.csv, front.png)")
