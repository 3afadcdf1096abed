"""examples/upgrade/api.py runs from a clean folder and says what each step did."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "examples" / "upgrade" / "api.py"


@pytest.mark.slow
def test_api_example_runs(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "v1: " in out and "v1.onnx (+ v1.json)" in out
    assert "v1 " in out and "40 x 15 features" in out
    assert "verdict: " in out and "search with v2: recall@1" in out
    assert (tmp_path / "index").is_dir() and (tmp_path / "v2.pt").is_file()
