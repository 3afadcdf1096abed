"""The worked example of examples/upgrade runs end to end (at a reduced size) so it cannot rot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import write_fake_fashion

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "examples" / "upgrade" / "run.sh"


@pytest.mark.slow
def test_upgrade_example_end_to_end(tmp_path: Path) -> None:
    fashion = write_fake_fashion(
        tmp_path / "fashion", n_classes=10, train_per_class=40, test_per_class=16
    )
    exe = Path(sys.executable).parent / "compatkit"
    env = {
        **os.environ,
        "COMPATKIT_FASHION_MNIST": str(fashion),
        "PYTHON": sys.executable,
        "COMPATKIT": str(exe) if exe.exists() else shutil.which("compatkit") or "compatkit",
        "V1_PER_CLASS": "12",
        "V2_PER_CLASS": "30",
        "QUERY_PER_CLASS": "6",
        "GALLERY_PER_CLASS": "8",
        "EPOCHS1": "1",
        "EPOCHS2": "1",
        "LAMBDAS": "0.5",
        "CURVE_STEPS": "2",
        "OMP_NUM_THREADS": "1",
    }
    work = tmp_path / "work"
    r = subprocess.run(
        ["bash", str(SCRIPT), str(work)], env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names = ["data-hoc", "data-er", "classes-hoc", "classes-er", "classes-hoc-lam0.5"]
    for name in names:
        v = json.loads((work / "checks" / f"{name}.json").read_text())
        assert v["format"] == "compatkit-check" and v["contract"]["ok"]
        assert f"compatkit check v1 -> {name}: exit {0 if v['compatible'] else 1}" in r.stdout
        unseen = v["groups"]["unseen"]["classes"]
        assert unseen == ["Ankle boot", "Bag", "Sandal", "Shirt", "Sneaker"]
    summary = (work / "summary.md").read_text()
    assert all(f"| {n} |" in summary for n in names)
    for m in ("hoc", "er"):
        assert (work / f"curve-classes-{m}" / "curve.json").is_file()
    assert "done in" in r.stdout
