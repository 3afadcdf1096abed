"""The README's commands run as written: each one parses with the real command line, every
`--set` applies to its config, and shell patterns are quoted (an unquoted `[...]` is a glob)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from compatkit.cli import build_parser
from compatkit.config import load_config
from compatkit.config.shipped import resolve_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    text = README.read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        found += [line for line in block.splitlines() if "compatkit " in line]
    for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        span = " ".join(span.split())
        placeholder = "<" in span or "..." in span or re.search(r"\b[A-Z][A-Z_]{2,}\b", span)
        name_only = len(span.split()) == 2  # `compatkit convert` names a command in prose
        if span.startswith(("compatkit ", "--set ")) and not placeholder and not name_only:
            found.append(span if span.startswith("compatkit") else f"compatkit run {span}")
    return found


COMMANDS = _commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 15
    assert any("--set 'seeds=[42,43,44]'" in c for c in COMMANDS)


@pytest.mark.parametrize("line", COMMANDS)
def test_a_readme_command_runs_as_written(line, monkeypatch, tmp_path):
    for word in line.split("#")[0].split():
        if any(ch in word for ch in "[]*?"):
            assert "'" in word or '"' in word, f"unquoted shell pattern {word!r} in: {line}"
    words = shlex.split(line, comments=True)
    if "pip" in words[:1]:
        return
    argv = words[words.index("compatkit") + 1 :]
    args = build_parser().parse_args(argv)  # argparse exits on anything it cannot read
    if args.command in ("run", "pretrain") and (args.config or args.overrides):
        monkeypatch.chdir(README.parent)  # configs/... as a user in the checkout types it
        cfg = load_config(resolve_config(args.config), args.overrides)
        for item in args.overrides:  # each value is the one the config now holds
            key, value = item.split("=", 1)
            got = cfg
            for part in key.split("."):
                if isinstance(got, list):
                    got = got[int(part)]
                elif isinstance(got, dict):
                    got = got[part]
                else:
                    got = getattr(got, part)
            assert got == yaml.safe_load(value) or float(got) == float(value), line
