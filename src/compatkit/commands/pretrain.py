"""``compatkit pretrain [CONFIG]``: train (or reuse) the providers a config needs."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_log_argument

HELP = "train the replacement models (providers) of a config, in every head version it needs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", nargs="?", help="YAML config or a shipped config's name (default: fashion)"
    )
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE"
    )
    p.add_argument(
        "--heads",
        nargs="*",
        choices=["simplex", "etf", "learnable"],
        help="head versions to train (default: those the config's methods need)",
    )
    p.add_argument(
        "--out",
        help="where to put providers (default: the config's providers_dir, else the providers "
        "cache that `compatkit run` reads: $COMPATKIT_CACHE/providers, ~/.cache/compatkit/...)",
    )
    add_log_argument(p)
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..config.shipped import resolve_config
    from ..protocol.experiment import Experiment
    from ..runtime.log import RunLog
    from ..tracking import backends_from_env, check_backends

    track = check_backends(args.log) if args.log else backends_from_env()
    cfg = load_config(resolve_config(args.config), args.overrides)
    if args.out:
        cfg.providers_dir = args.out
    log = RunLog(None, quiet=args.quiet)
    try:
        exp = Experiment(cfg, Path("."), log)  # no run folder: providers only
        exp.providers.check(args.heads)  # refuse a bad file before writing anything
        log.attach(exp.providers.folder / "pretrain.log")
        # one logged run per provider trained, grouped as "pretrain-<config name>"
        exp.start_tracking(track, group=f"pretrain-{cfg.name}", root=exp.providers.folder)
        failed = True
        try:
            paths = exp.providers.ensure(args.heads)
            failed = False
        finally:
            exp.tracking.close(failed)
        for (i, h), p in sorted(paths.items()):
            print(f"provider {i} {h:9s} {p}")
    finally:
        log.close()
    return 0
