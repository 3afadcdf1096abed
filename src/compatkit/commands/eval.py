"""``compatkit eval RUN_DIR``: recompute matrices, metrics and report from the checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError

HELP = "recompute a run's matrices, metrics.json and report from its checkpoints alone"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a directory written by `compatkit run`")
    p.add_argument("--methods", nargs="*", help="only these methods (default: all of the run)")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    import time

    from ..config import load_config
    from ..progress import RunLog
    from ..protocol import Runner, evaluate_run, write_metrics
    from ..report import read_json, write_report

    run_dir = Path(args.run_dir)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise InputError(f"{run_dir} is not a compatkit run (no config.yaml)")
    cfg = load_config(cfg_file)
    log = RunLog(run_dir / "log.txt", quiet=args.quiet)
    try:
        t0 = time.perf_counter()
        runner = Runner(cfg, run_dir, log)
        results = evaluate_run(runner, args.methods)
        old = run_dir / "metrics.json"
        if old.is_file():  # keep the run's wall time; a damaged file is about to be replaced
            try:
                prev = read_json(old)
            except InputError:
                prev = {}
            meta = prev.get("_meta") if isinstance(prev, dict) else None
            if isinstance(meta, dict) and "wall_time_s" in meta:
                results["_meta"]["wall_time_s"] = meta["wall_time_s"]
        write_metrics(run_dir, results)
        write_report(run_dir)
        log.info(
            f"evaluated in {time.perf_counter() - t0:.1f}s "
            f"({results['_meta']['feature_extractions']} feature extractions)"
        )
    finally:
        log.close()
    return 0
