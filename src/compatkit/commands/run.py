"""``compatkit run [CONFIG] [--set KEY=VALUE ...] [--out DIR] [--resume [--fork NEW]] [--dry-run]``.

A run is refused before it creates anything when its config, its data plan or a
provider file it would reuse is wrong; a run that fails later records the error
in its ``log.txt``. ``--resume`` continues the run in ``--out`` with that run's
own ``config.yaml`` (see :mod:`compatkit.protocol.records` for what a resume may change).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..runtime.layout import RunDir
from . import add_log_argument, add_set_argument

HELP = "run the IAM-CL2R scenario: providers, task sequence per method and seed, evaluation, report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config",
        nargs="?",
        help="YAML config file, or the name of a shipped one (see `compatkit configs`; "
        "default: fashion)",
    )
    add_set_argument(p)
    p.add_argument("--out", help="run directory (default: a new folder under runs/)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last completed task, with its own config.yaml",
    )
    p.add_argument(
        "--fork",
        metavar="NEW_DIR",
        help="with --out RUN --resume: start a new run in NEW_DIR from RUN's config.yaml changed "
        "by CONFIG/--set, instead of resuming RUN",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and the plan (tasks, roles, providers, steps); "
        "train nothing, create nothing",
    )
    add_log_argument(p)
    p.add_argument("--quiet", action="store_true", help="log to RUN_DIR/log.txt only")


def new_run_dir(name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path = Path(f"{base}-{i}")
        i += 1
    return path


def resolve_run(args: argparse.Namespace):
    """``(config, run directory, resume?)`` from the command line, refusing mixed settings."""
    from ..config import load_config
    from ..config.shipped import resolve_config
    from ..errors import ConfigError, InputError
    from ..protocol.records import format_changes, result_changes

    stray = [o for o in args.overrides if "=" not in o]
    if stray:
        raise InputError(
            f"--set takes KEY=VALUE pairs, got {stray[0]!r}"
            + (" (a CONFIG goes before --set)" if stray[0].endswith((".yaml", ".yml")) else "")
        )
    if args.fork and not args.resume:
        raise InputError(
            "--fork NEW_DIR goes with --out RUN --resume: it starts a new run from RUN's config"
        )
    if args.resume:
        if not args.out:
            raise InputError("--resume needs --out RUN_DIR (the run to continue)")
        out = Path(args.out)
        saved_file = RunDir(out).config
        if not saved_file.is_file():
            raise InputError(
                f"--resume: {out} holds no run (no config.yaml); start one with "
                f"compatkit run [CONFIG] --out {out}"
            )
        saved = load_config(saved_file)
        asked = saved
        if args.config or args.overrides:
            base = resolve_config(args.config) if args.config else saved_file
            asked = load_config(base, args.overrides)
        changes = result_changes(saved, asked)
        if args.fork:
            fork = Path(args.fork)
            if fork.resolve() == out.resolve():
                raise InputError(f"--fork {fork}: give a new folder, not the run being forked")
            if RunDir(fork).holds_run():
                raise InputError(f"--fork {fork} already holds a run; choose another folder")
            return asked, fork, False
        if changes:
            raise ConfigError(
                f"--resume: the settings given differ from {saved_file} in "
                f"{format_changes(changes)}; these shape the results, so a resume keeps the "
                f"run's own config: drop CONFIG/--set to continue {out}, or add --fork NEW_DIR "
                "to start a new run with these settings"
            )
        return asked, out, True
    cfg = load_config(resolve_config(args.config), args.overrides)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not args.out:
        raise InputError("under torchrun pass --out RUN_DIR, so that every process writes one run")
    run_dir = Path(args.out) if args.out else new_run_dir(cfg.name)
    if RunDir(run_dir).holds_run():
        raise InputError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out"
        )
    return cfg, run_dir, False


def main(args: argparse.Namespace) -> int:
    import yaml

    from ..config import to_dict
    from ..protocol.experiment import Experiment, run_experiment
    from ..runtime.log import RunLog
    from ..tracking import check_backends

    track = check_backends(args.log) if args.log else None  # None: $COMPATKIT_LOG
    cfg, run_dir, resume = resolve_run(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if args.dry_run:
        exp = Experiment(cfg, run_dir, RunLog(None, quiet=True))
        lines = plan_lines(exp, resume)  # every check of a real run, before any output
        print(f"# resolved config of {run_dir}{' (resume)' if resume else ''}")
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())
        print("\n".join(lines))
        return 0
    # Nothing is written until the config, the data and the providers to reuse are checked.
    log = RunLog(None, quiet=args.quiet or not main_rank)
    t0 = time.perf_counter()
    try:
        results = run_experiment(cfg, run_dir, log=log, resume=resume, track=track)
        if not main_rank:
            return 0
        dirs = RunDir(run_dir)
        log.info(f"done in {time.perf_counter() - t0:.0f}s: {dirs.metrics}, {dirs.report}")
        for m in cfg.methods:
            log.info(f"  {m:12s} {summary_line(results[m])}")
    finally:
        log.close()
    return 0


def summary_line(entry: dict) -> str:
    """AC, AM and final local accuracy of one method: with several seeds the mean ± std and
    the 95 % interval, with one the values marked as a single seed's."""
    from ..report.seeds import interval
    from ..report.table import run_value

    runs = entry.get("runs") or [entry]
    parts = []
    for key, label, digits, top in (
        ("AC", "AC", 2, 1.0),
        ("AM", "AM", 2, 100.0),
        ("local_final", "final local acc.", 2, 100.0),
    ):
        st = interval([run_value(r, key) for r in runs], bounds=(0.0, top))
        if st is None:
            continue
        if st["n"] == 1:
            parts.append(f"{label} {st['mean']:.{digits}f}")
        else:
            parts.append(
                f"{label} {st['mean']:.{digits}f} ± {st['std']:.{digits}f} "
                f"[95 %: {st['lo']:.{digits}f}, {st['hi']:.{digits}f}]"
            )
    seeds = [r.get("seed") for r in runs]
    note = f"(single seed {seeds[0]})" if len(runs) == 1 else f"(mean over {len(runs)} seeds)"
    return "   ".join(parts) + f"   {note}"


def plan_lines(exp, resume: bool = False) -> list[str]:
    """The plan of a run in words: tasks, data roles, providers and optimiser steps."""
    from ..data import steps_per_epoch
    from ..methods import METHODS

    cfg, plan = exp.cfg, exp.plan
    n = plan.num_tasks
    segments = plan.segments(cfg)
    lines = [
        "",
        f"# plan: {n} tasks, methods {cfg.methods}, seeds {cfg.seeds}, device {exp.device} "
        f"({exp.precision.name})",
        f"local learner: {len(plan.local)} images of {len(plan.class_order)} classes from "
        f"{cfg.local.data.dataset}/{cfg.local.data.split}; memory {cfg.local.memory_per_class} "
        "per class",
    ]
    opt = cfg.train
    per_epoch = {  # the trainer's own count (Plan.epoch_steps), per method: memory or not
        m: plan.epoch_steps(cfg, uses_memory=METHODS[m].uses_memory) for m in cfg.methods
    }
    for t in range(n):
        task = plan.scenario[t]
        steps: dict[int, list[str]] = {}
        for m in cfg.methods:
            steps.setdefault(opt.epochs * per_epoch[m][t], []).append(m)
        steps_s = "; ".join(
            _n(k, "step") + (f" ({', '.join(ms)})" if len(steps) > 1 else "")
            for k, ms in steps.items()
        )
        start = "provider" if t == 0 or segments[t] != segments[t - 1] else "previous task"
        mark = " (replacement)" if t and start == "provider" else ""
        lines.append(
            f"  task {t + 1}/{n}{mark}: classes {list(task.classes)}, {len(task.data)} images, "
            f"starts from {start if start != 'provider' else f'provider {segments[t]}'}, "
            f"{_n(opt.epochs, 'epoch')} = {steps_s}"
        )
    status = exp.providers.check(create_folder=False)
    lines.append(f"providers (folder {exp.providers.folder}):")
    words = {"configured": "configured file", "cached": "cached, checked", "train": "to train"}
    for i in range(exp.providers.count):
        pc = cfg.providers[i]
        data = plan.providers[i]
        if data is None:
            what = "a configured checkpoint"
        else:
            po = exp.providers.optim(i)
            k = po.epochs * steps_per_epoch(len(data), 0, po.batch_size, po.sampler)
            what = (
                f"{len(data)} images of classes {plan.provider_classes[i]}, "
                f"{_n(pc.epochs, 'epoch')} = {_n(k, 'step')}"
            )
        lines.append(f"  provider {i} ({pc.name or 'unnamed'}): {what}")
        for h in exp.providers.heads_needed():
            lines.append(f"    {h:9s} {words[status[(i, h)]]}: {exp.providers.path(i, h)}")
    lines.append(
        f"evaluation: query {len(plan.query)} images of {cfg.eval.query.dataset}/"
        f"{cfg.eval.query.split} classes {sorted(set(plan.query.labels.tolist()))}; gallery "
        f"{len(plan.gallery)} images of {cfg.eval.gallery.dataset}/{cfg.eval.gallery.split}"
    )
    lt = plan.local_test
    lines.append(f"local test: {len(lt) if lt is not None else 0} images of the local classes")
    if resume:
        for seed in cfg.seeds:
            for m in cfg.methods:
                done = exp.completed_tasks(m, seed)[0]
                lines.append(f"resume: {m} seed {seed}: {done}/{n} tasks done")
    lines.append("dry run: nothing trained, nothing written")
    return lines


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
