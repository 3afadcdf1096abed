"""Run the real `compatkit` command line on the tiny test dataset (shared by the CLI tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TINY = Path(__file__).parents[1] / "e2e" / "tiny.yaml"


def run_cli(args, fake_fashion, check=True, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMPATKIT_FASHION_MNIST": str(fake_fashion), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "compatkit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r
