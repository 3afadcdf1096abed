"""``compatkit configs [show NAME]``: the configurations shipped with compatkit."""

from __future__ import annotations

import argparse
import sys

HELP = "list the shipped configs (name and what each runs), or print one: configs show NAME"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        nargs="?",
        choices=["list", "show", "path"],
        default="list",
        help="list (default), show NAME (print the file) or path NAME (where it is installed)",
    )
    p.add_argument("name", nargs="?", help="a shipped config, e.g. fashion or cifar100_7tasks")


def main(args: argparse.Namespace) -> int:
    from ..config.shipped import DEFAULT_CONFIG, describe, resolve_config, shipped_configs
    from ..errors import InputError

    if args.action == "list":
        if args.name:
            raise InputError(
                f"`configs list` takes no NAME; to print one: configs show {args.name}"
            )
        shipped = shipped_configs()
        width = max((len(n) for n in shipped), default=0)
        for name, path in shipped.items():
            mark = " (default)" if name == DEFAULT_CONFIG else ""
            print(f"{name:<{width}}  {describe(path)}{mark}")
        print(
            "\nrun one: compatkit run NAME; print it: compatkit configs show NAME", file=sys.stderr
        )
        return 0
    if not args.name:
        raise InputError(f"`configs {args.action}` needs a NAME (see `compatkit configs`)")
    shipped = shipped_configs()
    if args.name not in shipped and args.name.removesuffix(".yaml") not in shipped:
        raise InputError(f"no shipped config {args.name!r}; shipped: {', '.join(shipped)}")
    path = resolve_config(args.name.removesuffix(".yaml"))
    if args.action == "path":
        print(path)
    else:
        sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0
