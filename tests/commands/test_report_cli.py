"""``compatkit report RUN_DIR`` end to end, in a subprocess like a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

MATRIX = [[50.0], [51.0, 55.0], [56.0, 54.0, 60.0], [57.0, 58.0, 61.0, 62.0]]


def metrics() -> dict:
    run = {
        "seed": 42,
        "matrix": MATRIX,
        "AC": 5 / 6,
        "AM": 56.4,
        "AA": [50.0, 52.0, 54.33333333333333, 56.4],
        "BC": 11 / 3,
        "FC": -11 / 3,
        "violations": [{"row": 2, "col": 1, "value": 54.0, "self": 55.0}],
        "final_self": 62.0,
    }
    entry = {**run, "seeds": [42], "runs": [run]}
    return {
        "hoc": entry,
        "_meta": {"seeds": [42], "num_tasks": 4, "replacement_tasks": [0, 2], "methods": ["hoc"]},
    }


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "compatkit", "report", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_cli_writes_report_and_plots(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps(metrics()), encoding="utf-8")
    res = run_cli(str(run_dir), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report_md = run_dir / "report.md"
    assert f"report: {report_md}" in res.stdout
    assert "hoc" in res.stdout and "0.83" in res.stdout and "1 / 6" in res.stdout
    assert "**54.00 ⚠**" in report_md.read_text(encoding="utf-8")
    for name in ("matrix_hoc.png", "matrices.png", "aa.png"):
        data = (run_dir / "plots" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_report_cli_errors_exit_2(tmp_path: Path) -> None:
    res = run_cli(str(tmp_path), cwd=tmp_path)  # a directory without metrics.json
    assert res.returncode == 2
    assert "metrics.json" in res.stderr and "Traceback" not in res.stderr
    res = run_cli(str(tmp_path / "missing"), cwd=tmp_path)
    assert res.returncode == 2
    assert "run directory not found" in res.stderr
    (tmp_path / "metrics.json").write_text('{"hoc": {"matrix": "oops"}}', encoding="utf-8")
    res = run_cli(str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2
    assert "hoc" in res.stderr and "matrix" in res.stderr
    assert not (tmp_path / "report.md").exists()
