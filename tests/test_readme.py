"""The commands of the README and of the docs that drive runs work as written: each one parses
with the real command line, every `--set` applies to its config, and shell patterns are quoted
(an unquoted `[...]` is a glob)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from compatkit.cli import build_parser
from compatkit.config import load_config
from compatkit.config.shipped import resolve_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The README and the docs its commands moved to: what a newcomer copies first.
DOCS = (README, ROOT / "docs" / "runs.md", ROOT / "docs" / "plasticity.md")


def _commands(path: Path) -> list[str]:
    text = path.read_text()
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


COMMANDS = [(path.relative_to(ROOT).as_posix(), line) for path in DOCS for line in _commands(path)]


def test_the_readme_and_docs_have_commands():
    readme = _commands(README)
    assert len(readme) >= 8  # both entry paths, the quick start and the results' command
    assert any("--set 'seeds=[42,43,44]'" in c for c in readme)
    assert len(_commands(ROOT / "docs" / "runs.md")) >= 12


@pytest.mark.parametrize(("doc", "line"), COMMANDS)
def test_a_documented_command_runs_as_written(doc, line, monkeypatch, tmp_path):
    for word in line.split("#")[0].split():
        if any(ch in word for ch in "[]*?"):
            assert "'" in word or '"' in word, f"unquoted shell pattern {word!r} in {doc}: {line}"
    words = shlex.split(line, comments=True)
    if "pip" in words[:1]:
        return
    argv = words[words.index("compatkit") + 1 :]
    args = build_parser().parse_args(argv)  # argparse exits on anything it cannot read
    if args.command in ("run", "pretrain") and (args.config or args.overrides):
        monkeypatch.chdir(ROOT)  # configs/... as a user in the checkout types it
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
            assert got == yaml.safe_load(value) or float(got) == float(value), f"{doc}: {line}"
