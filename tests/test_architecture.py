"""The shape of the package, checked: data flows one way between its packages, no private
name crosses a module, the top level stays a short list, and no text points outside the
repository. docs/architecture.md draws the same layers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "compatkit"

LAYERS: list[set[str]] = [
    {"errors", "runtime", "__init__"},
    {"simplex", "heads", "backbones", "losses", "metrics", "data", "retrieval"},
    {"model", "checkpoint", "report"},
    {"methods", "tracking"},
    {"config"},
    {"protocol"},
    {"analysis", "interop"},
    {"sweep", "upgrade"},
    {"commands", "cli", "__main__"},
]
"""Bottom to top: a package may import from its own layer and the layers below, never above."""


def _layer(top: str) -> int:
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"compatkit.{top} is in no layer of LAYERS: place it")


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, absolute module, imported names)`` of each ``from ... import`` in a file."""
    rel = path.relative_to(SRC).with_suffix("")
    package = ["compatkit", *rel.parts[:-1]]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module, [a.name for a in node.names]))
    return out


SOURCES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in SOURCES}
    for top in tops:
        _layer(top)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_data_flows_one_way(path: Path) -> None:
    own = path.relative_to(SRC).parts[0].removesuffix(".py")
    for line, module, _ in _imports(path):
        parts = module.split(".")
        if parts[0] != "compatkit" or len(parts) < 2:
            continue
        if _layer(parts[1]) > _layer(own):
            pytest.fail(
                f"{path.relative_to(REPO)}:{line} imports {module}: compatkit.{own} sits below "
                f"compatkit.{parts[1]} (tests/test_architecture.py LAYERS)"
            )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_private_name_crosses_a_module(path: Path) -> None:
    me = ".".join(["compatkit", *path.relative_to(SRC).with_suffix("").parts])
    for line, module, names in _imports(path):
        private = [n for n in names if re.match(r"_[a-z]", n)]
        if private and module.startswith("compatkit") and module != me:
            pytest.fail(
                f"{path.relative_to(REPO)}:{line} imports private {private} from {module}: "
                "make the name public or move it"
            )


def test_the_top_level_is_a_short_list() -> None:
    flat = sorted(p.name for p in SRC.glob("*.py"))
    assert len(flat) <= 10, f"{len(flat)} modules at the top of compatkit: {flat}"


MAX_LINES = 460
"""About 450 lines: a module a reader takes in at one sitting (a few lines of slack so that a
docstring edit does not force a split)."""


def test_every_module_is_short() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_nothing_points_outside_the_repository() -> None:
    texts = [*SRC.rglob("*.py"), *(REPO / "docs").rglob("*.md"), REPO / "README.md"]
    texts += [*(REPO / "configs").glob("*.yaml"), *(REPO / "examples").rglob("*.md")]
    outside = re.compile(r"\.\./shared|METHOD\.md|DESIGN\.md|FIDELITY\.md")
    found = [
        f"{p.relative_to(REPO)}:{i}"
        for p in texts
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    assert not found, f"references to files outside the repository: {found}"
