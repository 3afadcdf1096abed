"""A first run after a plain install: build the wheel, install it into a fresh virtual
environment (torch from the wheel pip finds on this machine or its index), and run
`compatkit configs` and `compatkit run --dry-run` from a folder outside the checkout.

Offline-safe: pip uses its configured find-links and indexes, with no retries, so a machine
without network installs from local files; the test is skipped, saying why, only when pip
finds no torch wheel at all."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TORCH = torch.__version__.split("+")[0]


def _pip_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env.update(
        PIP_RETRIES="0",  # an unreachable index fails fast; local files still serve
        PIP_TIMEOUT="15",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        COMPATKIT_CACHE=str(tmp_path / "cache"),
    )
    return env


def _run(cmd, env, cwd=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _build_wheel(dist: Path, env: dict) -> Path:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, REPO]
    try:  # the build backend already here is enough when it is recent (no index needed)
        if int(importlib.metadata.version("setuptools").split(".")[0]) >= 77:
            cmd.insert(4, "--no-build-isolation")
    except importlib.metadata.PackageNotFoundError:
        pass
    r = _run(cmd, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not re.search(r"(?i)deprecat", r.stdout + r.stderr), "the build warns"
    (wheel,) = dist.glob("compatkit-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_runs_outside_the_checkout(tmp_path):
    env = _pip_env(tmp_path)
    wheel = _build_wheel(tmp_path / "dist", env)
    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", venv], env)
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    r = _run([py, "-m", "pip", "install", "-q", f"torch=={TORCH}", wheel], env, timeout=1800)
    if r.returncode != 0 and re.search(r"No matching distribution found for torch\b", r.stderr):
        pytest.skip(f"pip finds no torch=={TORCH} wheel here (no index, no local file)")
    assert r.returncode == 0, r.stdout + r.stderr

    elsewhere = tmp_path / "elsewhere"  # no configs/ folder, no source tree
    elsewhere.mkdir()
    exe = venv / "bin" / "compatkit"
    where = _run([py, "-c", "import compatkit; print(compatkit.__file__)"], env, elsewhere)
    assert str(venv) in where.stdout, where.stdout + where.stderr

    r = _run([exe, "configs"], env, elsewhere)
    assert r.returncode == 0, r.stderr
    names = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    assert names == {p.stem for p in (REPO / "configs").glob("*.yaml")}

    r = _run([exe, "run", "--dry-run"], env, elsewhere)
    if r.returncode == 0:  # Fashion-MNIST is installed where the loaders look
        assert "# plan: 5 tasks" in r.stdout and "name: fashion" in r.stdout
    else:  # the packaged default was found; only the data is missing here
        assert r.returncode == 2 and "fashion-mnist" in r.stderr.lower(), r.stderr
        assert "no default config" not in r.stderr
    assert list(elsewhere.iterdir()) == []  # a dry run writes nothing
