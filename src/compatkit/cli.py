"""The ``compatkit`` command line: one sub-command per module in ``compatkit.commands``.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``. Modules keep heavy imports inside ``main`` so that
``compatkit --help`` stays instant.

How a command ends is decided here, once, for every command (the rule is
structural: a new check needs no new ``except`` clause):

- a :class:`~compatkit.errors.CompatkitError` (the user's config, data,
  checkpoint or input is at fault) prints one line,
  ``compatkit COMMAND: error: MESSAGE``, and exits with status 2;
- any other exception is a bug in compatkit: one line saying so (type,
  message, and how to see the traceback) and status 1; ``--debug`` prints the
  traceback instead;
- output piped into a reader that stops early (``| head``) ends quietly with
  status 141, as a shell tool killed by SIGPIPE would;
- Ctrl-C ends with status 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from . import __version__
from .errors import CompatkitError

# name -> the module that defines the command
COMMANDS = {
    "run": "compatkit.commands.run",
    "pretrain": "compatkit.commands.pretrain",
    "eval": "compatkit.commands.eval",
    "report": "compatkit.commands.report",
    "metrics": "compatkit.commands.metrics",
    "analyze": "compatkit.commands.analyze",
    "theory": "compatkit.commands.theory",
    "configs": "compatkit.commands.configs",
    "convert": "compatkit.commands.convert",
    "train": "compatkit.commands.train",
    "check": "compatkit.commands.check",
    "embed": "compatkit.commands.embed",
    "export": "compatkit.commands.export",
    "index": "compatkit.commands.index",
    "sweep": "compatkit.commands.sweep",
}

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE
_DEBUG_HELP = "on an unexpected error, print the full traceback (for a bug report)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compatkit",
        description="Compatible representation learning: d-Simplex-HOC and the IAM-CL2R protocol.",
    )
    p.add_argument("--version", action="version", version=f"compatkit {__version__}")
    p.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(modname)
        sp = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(sp)
        if "--debug" not in sp._option_string_actions:
            # Also after the command (`compatkit run --debug`); SUPPRESS keeps a global
            # `compatkit --debug run` from being reset by the sub-parser's default.
            sp.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
            )
        sp.set_defaults(_main=mod.main)
    return p


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 0 if args.command is None else EXIT_USER_ERROR
    where = f"compatkit {args.command}"
    debug = bool(getattr(args, "debug", False))
    try:
        code = int(args._main(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, inside the rule, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CompatkitError as e:
        if debug:
            traceback.print_exc()
        print(f"{where}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:
        if debug:
            traceback.print_exc()
        else:
            print(
                f"{where}: internal error (a bug in compatkit, not in your input): "
                f"{type(e).__name__}: {_one_line(e)}; rerun with --debug for the traceback "
                "and report it",
                file=sys.stderr,
            )
        return EXIT_INTERNAL_ERROR


def _one_line(e: BaseException) -> str:
    """The message on one line (a multi-line message would read as several errors)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    return " ".join(str(msg).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
