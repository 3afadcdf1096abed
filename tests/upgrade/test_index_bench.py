"""Smoke test of ``benchmarks/bench_index.py --quick`` (it runs, checks what it claims, and
writes its own section), with results in a temporary file, never benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("bench_index")
    finally:
        sys.path.remove(str(BENCH))


def test_peak_rss_sees_an_allocation(bench) -> None:
    before = bench.peak_rss()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert bench.peak_rss() >= before + 60 * 2**20 > 0
    del block


@pytest.mark.slow
def test_bench_index_quick(bench, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    res = tmp_path / "R.md"
    figures = bench.main(["--quick", "--results", str(res), "--tmp", str(tmp_path)])
    row = figures["sizes"][3000]
    assert row["compare"]["identical"] is True
    assert row["build"]["disk_bytes"] > 3000 * 64 * 2  # float16 vectors, plus headers and ids
    assert all(row[b]["peak_rss"] >= row[b]["import_rss"] > 0 for b in ("torch", "faiss"))
    text = res.read_text()
    assert "Command: `python benchmarks/bench_index.py --quick`" in text
    assert str(tmp_path) not in text  # no path of this machine in the results
    assert f"Date: {datetime.date.today().isoformat()}" in text and "| 3,000 |" in text
    assert [p.name for p in tmp_path.iterdir()] == ["R.md"]  # the temporary index is gone
