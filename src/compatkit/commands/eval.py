"""``compatkit eval RUN_DIR``: recompute matrices, metrics and report from the checkpoints."""

from __future__ import annotations

import argparse

from ..errors import InputError

HELP = "recompute a run's matrices, metrics.json and report from its checkpoints alone"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a directory written by `compatkit run`")
    p.add_argument("--methods", nargs="*", help="only these methods (default: all of the run)")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    import time

    from ..config import load_config
    from ..protocol.experiment import run_experiment
    from ..runtime.files import read_json
    from ..runtime.layout import RunDir
    from ..runtime.log import RunLog

    dirs = RunDir(args.run_dir)
    if not dirs.config.is_file():
        raise InputError(f"{dirs.root} is not a compatkit run (no config.yaml)")
    cfg = load_config(dirs.config)
    meta = {}
    if dirs.metrics.is_file():  # keep the run's wall time; a damaged file is about to be replaced
        try:
            prev = read_json(dirs.metrics)
        except InputError:
            prev = {}
        old = prev.get("_meta") if isinstance(prev, dict) else None
        if isinstance(old, dict) and "wall_time_s" in old:
            meta["wall_time_s"] = old["wall_time_s"]
    log = RunLog(dirs.log, quiet=args.quiet)
    try:
        t0 = time.perf_counter()
        results = run_experiment(
            cfg, dirs.root, log=log, methods=args.methods, train=False, meta=meta
        )
        log.info(
            f"evaluated in {time.perf_counter() - t0:.1f}s "
            f"({results['_meta']['feature_extractions']} feature extractions)"
        )
    finally:
        log.close()
    return 0
