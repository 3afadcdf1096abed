"""Run the real `compatkit` command line on the tiny test dataset (shared by the CLI tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TINY = Path(__file__).parents[1] / "e2e" / "tiny.yaml"


def cli_env(fake_fashion) -> dict:
    """The environment of a CLI subprocess: the tiny dataset, one OpenMP thread."""
    return {**os.environ, "COMPATKIT_FASHION_MNIST": str(fake_fashion), "OMP_NUM_THREADS": "1"}


def start_cli(args, fake_fashion) -> subprocess.Popen:
    """The real command line started in its own session (for tests that kill it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "compatkit", *args],
        env=cli_env(fake_fashion),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(pred, proc: subprocess.Popen, timeout: float = 400.0) -> None:
    """Poll ``pred`` every 20 ms until it holds; fail if ``proc`` ends first or time runs out
    (then the whole process group is killed: no job outlives the test)."""
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the command ended (exit {proc.returncode}) before the point")
        if time.monotonic() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("timed out waiting for the command")
        time.sleep(0.02)


def run_cli(args, fake_fashion, check=True, cwd=None) -> subprocess.CompletedProcess:
    env = cli_env(fake_fashion)
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
