"""``compatkit run [CONFIG] [--set key=value ...] [--out DIR] [--resume]``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import add_set_argument

HELP = "run the IAM-CL2R scenario: providers, task sequence per method and seed, evaluation, report"

DEFAULT_CONFIG = "fashion.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help=f"YAML config (default: configs/{DEFAULT_CONFIG})")
    add_set_argument(p)
    p.add_argument("--out", help="run directory (default: a new folder under runs/)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its last completed task",
    )
    p.add_argument("--quiet", action="store_true", help="log to RUN_DIR/log.txt only")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def default_config_path() -> Path:
    """The packaged default config (installed with compatkit) or the repository's copy."""
    from importlib.resources import files

    packaged = Path(str(files("compatkit") / "configs" / DEFAULT_CONFIG))
    here = Path("configs") / DEFAULT_CONFIG
    checkout = Path(__file__).resolve().parents[3] / "configs" / DEFAULT_CONFIG  # editable install
    for p in (packaged, here, checkout):
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"no default config {DEFAULT_CONFIG}: run from the compatkit checkout or pass a CONFIG"
    )


def new_run_dir(name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path = Path(f"{base}-{i}")
        i += 1
    return path


def main(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..progress import RunLog
    from ..protocol import Runner, evaluate_run, write_metrics
    from ..report import write_report

    cfg_path = Path(args.config) if args.config else default_config_path()
    cfg = load_config(cfg_path, args.overrides)
    if args.resume and not args.out:
        raise ValueError("--resume needs --out RUN_DIR (the run to continue)")
    import os

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not args.out:
        raise ValueError("under torchrun pass --out RUN_DIR, so that every process writes one run")
    run_dir = Path(args.out) if args.out else new_run_dir(cfg.name)
    if run_dir.exists() and any(run_dir.glob("*/seed_*/task_*.pt")) and not args.resume:
        raise ValueError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out"
        )
    main_rank = rank == 0
    log = RunLog(run_dir / "log.txt" if main_rank else None, quiet=args.quiet or not main_rank)
    t0 = time.perf_counter()
    try:
        runner = Runner(cfg, run_dir, log)
        plan = runner.plan  # loads and checks the data before anything is trained
        if main_rank:
            runner.write_config()
        log.info(
            f"run {run_dir}: {plan.num_tasks} tasks {[t.classes for t in plan.scenario]}, "
            f"methods {cfg.methods}, seeds {cfg.seeds}, device {runner.device} "
            f"({runner.precision.name})"
        )
        runner.ensure_providers()
        for seed in cfg.seeds:
            for m in cfg.methods:
                runner.run_sequence(m, seed, resume=args.resume)
        results = evaluate_run(runner)
        results["_meta"]["wall_time_s"] = round(time.perf_counter() - t0, 1)
        results["_meta"]["processes"] = world
        if not main_rank:
            return 0
        write_metrics(run_dir, results)
        report = write_report(run_dir)
        log.info(f"done in {time.perf_counter() - t0:.0f}s: {run_dir / 'metrics.json'}, {report}")
        for m in cfg.methods:
            s = results[m]["summary"]
            local = s.get("local_final") or {}
            plasticity = (
                f"   final local acc. {local['mean']:.2f} ± {local['std']:.2f}"
                if local.get("mean") is not None
                else ""
            )
            log.info(
                f"  {m:12s} AC {s['AC']['mean']:.2f} ± {s['AC']['std']:.2f}   "
                f"AM {s['AM']['mean']:.2f} ± {s['AM']['std']:.2f}{plasticity}"
            )
    finally:
        log.close()
    return 0
