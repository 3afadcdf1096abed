"""`compatkit analyze` end to end, as a user runs it (subprocess), on the tiny scenario."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .cli import TINY
from .cli import run_cli as _cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fake_fashion) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    _cli(["run", str(TINY), "--out", str(out), "--quiet"], fake_fashion)
    return out


def test_analyze_prints_verdicts_and_writes_everything(run_dir, fake_fashion):
    r = _cli(["analyze", str(run_dir), "--pairs", "200"], fake_fashion)
    assert "Definition 1 in expectation" in r.stdout
    for m in ("hoc", "er"):
        assert f"{m} (seed 7, cosine): same-class inequality holds in expectation for" in r.stdout
        assert f"{m} (seed 7, euclidean):" in r.stdout
    a = json.loads((run_dir / "analysis.json").read_text())
    assert a["settings"]["max_pairs_per_group"] == 200
    for line in a["verdicts"]:
        assert line in r.stdout
    for p in a["plots"]:
        assert (run_dir / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"wrote {run_dir / p}" in r.stdout
    report = (run_dir / "report.md").read_text()
    assert "## Analysis: Definition 1 and stationarity" in report


def test_analyze_no_plots_keeps_the_figures_it_did_not_redraw(run_dir, fake_fashion):
    before = json.loads((run_dir / "analysis.json").read_text())["plots"]
    assert before  # the test above drew them
    _cli(["analyze", str(run_dir), "--pairs", "200", "--no-plots"], fake_fashion)
    a = json.loads((run_dir / "analysis.json").read_text())
    assert a["plots"] == before
    report = (run_dir / "report.md").read_text()
    for p in before:
        assert report.count(f"]({p})") == 1, p
    assert "figure5_matrices" not in report and report.count("](plots/matrices.png)") == 1


def test_analyze_json_one_metric_one_method(run_dir, fake_fashion):
    r = _cli(
        ["analyze", str(run_dir), "--json", "--metric", "cosine", "--methods", "hoc", "--no-plots"],
        fake_fashion,
    )
    payload = json.loads(r.stdout)
    a = payload["analysis"]
    assert list(a["methods"]) == ["hoc"] and a["settings"]["metrics"] == ["cosine"]
    pair = a["methods"]["hoc"]["seeds"]["7"]["pairs"][0]
    assert "cosine" in pair and "euclidean" not in pair
    assert a["plots"] == []
    assert json.loads((run_dir / "analysis.json").read_text()) == a


def test_analyze_errors_exit_2(tmp_path, run_dir, fake_fashion):
    r = _cli(["analyze", str(tmp_path / "missing")], fake_fashion, check=False)
    assert r.returncode == 2 and "run directory not found" in r.stderr
    r = _cli(["analyze"], fake_fashion, check=False)
    assert r.returncode == 2 and "--simplex-demo" in r.stderr
    r = _cli(["analyze", str(run_dir), "--seed", "99", "--no-plots"], fake_fashion, check=False)
    assert r.returncode == 2 and "not in this run" in r.stderr
