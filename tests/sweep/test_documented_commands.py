"""Every ``compatkit sweep`` command in the README, docs/ and benchmarks/RESULTS.md runs as
written: it parses with the real command line, its CONFIG resolves (shipped names too), and
its grid expands into valid settings; shell patterns are quoted."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from compatkit.cli import build_parser
from compatkit.config import resolve_config
from compatkit.sweep import expand, parse_vary

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
           ROOT / "benchmarks" / "RESULTS.md"]  # fmt: skip


def _commands() -> list[tuple[str, str]]:
    """``(file name, command)`` for every sweep command inside a bash block, continuation
    lines joined; a command quoted in a comment (``# ...: compatkit sweep ...``) counts too."""
    found = []
    for path in SOURCES:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                at = line.find("compatkit sweep ")
                if at >= 0:
                    found.append((path.name, line[at:]))
    return found


COMMANDS = _commands()


def test_the_sweep_commands_are_found():
    files = {name for name, _ in COMMANDS}
    assert {"sweep.md", "RESULTS.md", "adding-a-method.md"} <= files, files
    assert len(COMMANDS) >= 12


@pytest.mark.parametrize(("source", "line"), COMMANDS, ids=[f"{n}:{i}" for i, (n, _) in
                                                          enumerate(COMMANDS)])  # fmt: skip
def test_a_documented_sweep_command_runs_as_written(source, line, monkeypatch):
    for word in line.split(" #")[0].split():
        if any(ch in word for ch in "[]*?"):
            assert "'" in word or '"' in word, f"unquoted shell pattern {word!r} in: {line}"
    argv = shlex.split(line, comments=True)[1:]
    args = build_parser().parse_args(argv)  # argparse exits on anything it cannot read
    assert args.command == "sweep" and args.out
    monkeypatch.chdir(ROOT)  # as a user in the checkout types it
    if source == "adding-a-method.md":  # after `pip install ./examples/plugin`, as it says
        from compatkit.methods import load_plugins

        monkeypatch.syspath_prepend(str(ROOT / "examples" / "plugin" / "src"))
        load_plugins(["compatkit_l2.method"])
    settings = expand(resolve_config(args.config), args.overrides, parse_vary(args.vary))
    assert settings and all(s.seeds for s in settings)
    methods = {s.method for s in settings}
    for item in args.overrides:
        if item.startswith("methods="):
            assert methods == set(item.split("=", 1)[1].strip("[]").split(",")), line
