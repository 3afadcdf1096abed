"""Sub-commands of the ``compatkit`` command line (see ``compatkit.cli``)."""

from __future__ import annotations

import argparse


def add_set_argument(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]`` (repeatable): config overrides, each the YAML value
    of one key."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"override config values{what} (YAML), e.g. --set train.epochs=5 'seeds=[1,2]'; "
        "several pairs may follow one --set; put CONFIG before --set",
    )
