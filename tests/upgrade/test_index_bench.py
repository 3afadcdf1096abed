"""Smoke test of ``benchmarks/bench_index.py --quick`` (it runs, checks what it claims, and
writes its own section), with results in a temporary file, never benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("bench_index")
    finally:
        sys.path.remove(str(BENCH))


def test_peak_rss_sees_an_allocation() -> None:
    """In a fresh process: the peak of one that never held much, then after 64 MiB."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import numpy as np; "
        "from bench_index import peak_rss; a = peak_rss(); b = np.ones(2**23); "
        "print(a, peak_rss())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, check=True
    )
    before, after = map(int, out.stdout.split())
    assert after >= before + 60 * 2**20 and before > 0


@pytest.mark.slow
def test_bench_index_quick(bench, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    pytest.importorskip("lancedb")
    pytest.importorskip("milvus_lite")
    res = tmp_path / "R.md"
    figures = bench.main(["--quick", "--results", str(res), "--tmp", str(tmp_path)])
    rows = {r["name"]: r for r in figures["runs"][0]["rows"]}
    assert {"faiss", "lancedb-exact", "milvus-exact"} <= set(rows)
    assert any(n.startswith("lancedb-IVF_HNSW_SQ") for n in rows)
    assert any(n.startswith("milvus-HNSW") for n in rows)
    for name in ("lancedb-exact", "milvus-exact"):  # exact search finds FAISS's top 10
        assert rows[name]["recall"] == 1.0
    assert all(0.0 <= r["recall"] <= 1.0 for r in rows.values())
    assert all(r["search"]["peak_rss"] >= r["search"]["import_rss"] > 0 for r in rows.values())
    text = res.read_text()
    assert "Command: `python benchmarks/bench_index.py --quick`" in text
    assert str(tmp_path) not in text  # no path of this machine in the results
    assert f"Date: {datetime.date.today().isoformat()}" in text and "| 3,000 x 64 |" in text
    assert [p.name for p in tmp_path.iterdir()] == ["R.md"]  # the temporary data is gone
