"""Sub-commands of the ``compatkit`` command line (see ``compatkit.cli``)."""

from __future__ import annotations

import argparse


def add_set_argument(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--set KEY=VALUE`` (repeatable): a config override, as the YAML value of one key."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value{what}, e.g. --set train.epochs=5 (repeatable)",
    )
