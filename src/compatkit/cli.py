"""The ``compatkit`` command line: one sub-command per module in ``compatkit.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``. Modules keep heavy imports inside ``main`` so that
``compatkit --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# name -> module; a module not present yet is simply not offered.
COMMANDS = {
    "run": "compatkit.commands.run",
    "pretrain": "compatkit.commands.pretrain",
    "eval": "compatkit.commands.eval",
    "report": "compatkit.commands.report",
    "metrics": "compatkit.commands.metrics",
    "analyze": "compatkit.commands.analyze",
    "theory": "compatkit.commands.theory",
    "convert": "compatkit.commands.convert",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compatkit",
        description="Compatible representation learning: d-Simplex-HOC and the IAM-CL2R protocol.",
    )
    p.add_argument("--version", action="version", version=f"compatkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        sp = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(sp)
        sp.set_defaults(_main=mod.main)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        if args.command is None and "run" in COMMANDS:
            # `compatkit` alone behaves like `compatkit run` would need a config: show help.
            parser.print_help()
            return 0
        parser.print_help()
        return 2
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        if getattr(args, "debug", False):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"compatkit {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
