"""``compatkit pretrain [CONFIG]``: train (or reuse) the providers a config needs."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train the replacement models (providers) of a config, in every head version it needs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (default: the packaged fashion.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--heads",
        nargs="*",
        choices=["simplex", "etf", "learnable"],
        help="head versions to train (default: those the config's methods need)",
    )
    p.add_argument(
        "--out", help="where to put providers (default: providers_dir or runs/providers)"
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def main(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..progress import RunLog
    from ..protocol import Runner
    from .run import default_config_path

    cfg = load_config(Path(args.config) if args.config else default_config_path(), args.overrides)
    if args.out:
        cfg.providers_dir = args.out
    providers_dir = Path(cfg.providers_dir or "runs/providers")
    cfg.providers_dir = str(providers_dir)
    log = RunLog(providers_dir / "pretrain.log", quiet=args.quiet)
    try:
        runner = Runner(cfg, providers_dir / "_pretrain", log)
        paths = runner.ensure_providers(args.heads)
        for (i, h), p in sorted(paths.items()):
            print(f"provider {i} {h:9s} {p}")
    finally:
        log.close()
    return 0
