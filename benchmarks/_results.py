"""Writing benchmark figures into ``benchmarks/RESULTS.md``, one section per benchmark.

Several benchmarks share one results file, and each may be rerun alone on a
different day or machine; so each owns exactly one section, delimited by
``<!-- BEGIN name -->`` and ``<!-- END name -->``, and rewrites that section
only (creating the file or the section when missing). Every section states the
command that produced it, the machine (CPU model, cores, torch version and
threads, device, GPU name on CUDA) and the date: a figure without its machine
is not a result.

Writes take an exclusive lock (a file in the temporary folder, named after the
results file) and replace the file atomically, so two benchmarks finishing at
the same time cannot lose each other's section.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import re
import shlex
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_RESULTS",
    "command_line",
    "machine",
    "machine_line",
    "md_table",
    "read_section",
    "render_section",
    "write_section",
]

DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
"""The shared results file, next to the benchmark scripts."""

_HEADER = """# Benchmark results

Each section below is written by one script in this folder (see README.md) and
rewritten only by that script; rerun it to refresh its figures. Ratios measured
side by side in one process are the figures to compare across machines; absolute
rates depend on the machine and on what else ran on it.
"""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(device: str | None = None) -> dict:
    """Facts about this machine that decide the figures (no host names, no paths).

    ``device``: the torch device the benchmark ran on (``cpu``, ``cuda``, ``cuda:1``);
    the GPU's name is added for CUDA devices.
    """
    import torch

    dev = torch.device(device) if device else torch.device("cpu")
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(dev),
        "gpu": None,
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def machine_line(info: dict) -> str:
    """One line: ``Intel Xeon ..., 2 cores (2 torch threads), torch 2.x, Python 3.x, cpu``."""
    dev = info["device"] + (f" ({info['gpu']})" if info.get("gpu") else "")
    return (
        f"{info['cpu']}, {info['cores']} cores ({info['threads']} torch threads), "
        f"torch {info['torch']}, Python {info['python']}, device {dev}"
    )


def command_line(script: str | os.PathLike, argv: Sequence[str]) -> str:
    """The command as a user types it from the repository root, e.g.
    ``python benchmarks/bench_train.py --quick``.

    ``--results PATH`` is left out: it only says where this copy of the figures went,
    and it would put a path of this machine into the results.
    """
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--results":
            skip = True
            continue
        if a.startswith("--results="):
            continue
        args.append(a)
    name = Path(script).name
    return " ".join(["python", f"benchmarks/{name}", *(shlex.quote(a) for a in args)])


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; cells are written with ``str`` (format numbers before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def render_section(name: str, title: str, command: str, info: dict, body: str) -> str:
    """The text of one section (markers included), stamped with command, machine and date."""
    if not _NAME.match(name):
        raise ValueError(f"section name {name!r}: use letters, digits, '_', '.', '-'")
    today = datetime.date.today().isoformat()
    return (
        f"<!-- BEGIN {name} -->\n"
        f"## {title}\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {machine_line(info)}  \n"
        f"Date: {today}\n\n"
        f"{body.strip()}\n"
        f"<!-- END {name} -->"
    )


def _span(text: str, name: str) -> tuple[int, int] | None:
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    i = text.find(begin)
    if i < 0:
        return None
    j = text.find(end, i)
    if j < 0:
        raise ValueError(f"results file: '{begin}' has no matching '{end}'; fix it by hand")
    return i, j + len(end)


def read_section(path: str | os.PathLike, name: str) -> str | None:
    """The current text of section ``name`` (markers included), or None."""
    p = Path(path)
    if not p.is_file():
        return None
    text = p.read_text(encoding="utf-8")
    span = _span(text, name)
    return text[span[0] : span[1]] if span else None


def write_section(path: str | os.PathLike, name: str, section: str) -> Path:
    """Replace section ``name`` of the results file at ``path`` with ``section``.

    ``section`` is what :func:`render_section` returns (markers included). The
    rest of the file is kept byte for byte; a missing file is created with a
    short header and a missing section is appended at the end.
    """
    p = Path(path)
    if _span(section, name) != (0, len(section.rstrip("\n"))):
        raise ValueError(f"section text must start and end with the markers of {name!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"compatkit-results-{key}.lock"
    with open(lock, "a+b") as lf:
        _lock(lf)
        try:
            text = p.read_text(encoding="utf-8") if p.is_file() else _HEADER
            span = _span(text, name)
            body = section.rstrip("\n")
            if span:
                new = text[: span[0]] + body + text[span[1] :]
            else:
                new = text.rstrip("\n") + "\n\n" + body + "\n"
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(new)
                os.replace(tmp, p)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        finally:
            _unlock(lf)
    return p


def _lock(f) -> None:
    if sys.platform == "win32":  # pragma: no cover - no fcntl there; a lost race is harmless
        return
    import fcntl

    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _unlock(f) -> None:
    if sys.platform == "win32":  # pragma: no cover
        return
    import fcntl

    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
