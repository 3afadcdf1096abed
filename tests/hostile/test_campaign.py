"""A seeded subset of the hostile-input campaign (``tests/hostile/campaign.py``), so that a
regression in any refusal fails CI: every mutated config and hostile matrix must be refused in
one line or run, never end in a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_campaign_has_no_traceback():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH")) if p
    )
    r = subprocess.run(
        [sys.executable, "-m", "tests.hostile.campaign", "--quick", "--configs", "30"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    total = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("total"))
    assert "other   0" in total and "(unexpected refusals 0)" in total, r.stdout
