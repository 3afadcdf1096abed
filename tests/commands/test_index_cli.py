"""``compatkit index`` through the real command line, on real checkpoints and image folders:
build, search (refused, forced, then accepted after ``compatkit check --record``), backfill
(killed with SIGKILL mid-way, then resumed to exactly the vectors of an uninterrupted run),
curve, info, and one-line errors for corrupt files."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from compatkit.upgrade.backfill import PAUSE_ENV, backfill
from compatkit.upgrade.embed import load_embedder
from compatkit.upgrade.index import describe, load_checks, load_for_model
from compatkit.upgrade.index_search import search
from compatkit.upgrade.index_store import PLAN, Gallery
from tests.upgrade.folders import tiny_folders
from tests.upgrade.index_helpers import trained_models

from .cli import run_cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return tiny_folders(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny) -> dict[str, Path]:
    return trained_models(tmp_path_factory, tiny)


@pytest.fixture(scope="module")
def built(models, tiny, tmp_path_factory, fake_fashion) -> Path:
    """An index of the gallery folder by v1, built once through the CLI (never modified)."""
    out = tmp_path_factory.mktemp("cli-index") / "idx"
    r = run_cli(
        [
            "index",
            "build",
            str(models["v1"]),
            str(tiny["gallery"]),
            "--out",
            str(out),
            "--shard-rows",
            "32",
        ],
        fake_fashion,
    )
    assert f"index {out}: 72 items, 6 classes, 15-d float16, 3 shard(s)" in r.stdout
    return out


@pytest.fixture
def idx(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built index, for tests that change it."""
    return Path(shutil.copytree(built, tmp_path / "idx"))


def test_search_prints_neighbours_and_metrics(built, models, tiny, tmp_path, fake_fashion) -> None:
    out = tmp_path / "res.json"
    args = ["index", "search", str(built), str(tiny["query"]), "--model", str(models["v1"])]
    text = run_cli([*args, "-k", "3", "--show", "1", "--json", str(out)], fake_fashion).stdout
    res = json.loads(out.read_text())
    assert res["k"] == 3 and len(res["results"]) == 60 and res["warnings"] == []
    # The same search in this process: same neighbours (ids of the gallery's files).
    emb = load_embedder(models["v1"])
    g = Gallery.open(built)
    data, qids = load_for_model(emb, str(tiny["query"]))
    want = search(g, emb.embed(data).numpy(), k=3, backend="torch")
    assert [r["id"] for r in res["results"]] == qids
    for i, r in enumerate(res["results"]):
        assert [n["id"] for n in r["neighbours"]] == [g.ids[p] for p in want.positions[i]]
        assert r["neighbours"][0]["class"] == g.classes[g.labels[want.positions[i, 0]]]
    hits = [r["neighbours"][0]["class"] == r["class"] for r in res["results"]]
    assert res["metrics"]["recall@1"] == pytest.approx(100 * np.mean(hits))
    assert 0 < res["metrics"]["mAP"] <= 100 and res["metrics"]["unanswerable"] == 0
    # Text: a header, one query (--show 1) with its 3 neighbours, the metrics.
    assert text.startswith("60 queries, top 3 by cosine")
    assert text.count("query ") == 1 and "  3. " in text and "  4. " not in text
    assert f"60 labelled queries: recall@1 {res['metrics']['recall@1']:.2f}%" in text


@pytest.mark.slow  # four command runs, one of them `compatkit check`
def test_search_is_refused_then_forced_then_accepted_after_a_recorded_check(
    idx, models, tiny, fake_fashion
) -> None:
    query = [
        "index",
        "search",
        str(idx),
        str(tiny["query"]),
        "--model",
        str(models["v2"]),
        "--no-map",
    ]
    r = run_cli(query, fake_fashion, check=False)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "refuses model" in lines[0] and "no recorded check" in lines[0]
    assert "--force" in lines[0]
    r = run_cli([*query, "--force"], fake_fashion)
    assert "warning: --force: no recorded check" in r.stderr and "recall@1" in r.stdout
    # The gate's own verdict, recorded into the index (tolerance 100: passes whatever it measures).
    check = ["check", str(models["v1"]), str(models["v2"]), "--query", str(tiny["query"])]
    check += ["--gallery", str(tiny["gallery"]), "--record", str(idx), "--device", "cpu"]
    r = run_cli([*check, "--tolerance", "100", "--quiet"], fake_fashion, check=False)
    assert r.returncode == 0, r.stderr
    r = run_cli(query, fake_fashion)
    assert "warning" not in r.stderr and "60 labelled queries" in r.stdout
    fps = [load_embedder(models[k]).fingerprint for k in ("v1", "v2")]
    assert [(c["old"]["fingerprint"], c["new"]["fingerprint"]) for c in load_checks(idx)] == [
        tuple(fps)
    ]


def _read_until(p: subprocess.Popen, prefix: str, timeout: float = 300.0) -> list[str]:
    """stderr lines of ``p`` up to the first starting with ``prefix``."""
    lines, buf, deadline = [], "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([p.stderr], [], [], 1.0)
        if not ready:
            if p.poll() is not None:
                break
            continue
        chunk = os.read(p.stderr.fileno(), 4096).decode()
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.split("\n")
        lines += done
        if any(line.startswith(prefix) for line in done):
            return lines
    raise AssertionError(f"no line starting with {prefix!r}; got {[*lines, buf]}")


def test_backfill_killed_mid_way_resumes_to_the_uninterrupted_result(
    idx, models, tmp_path, fake_fashion
) -> None:
    reference = Path(shutil.copytree(idx, tmp_path / "reference"))
    args = ["index", "backfill", str(idx), "--model", str(models["v2"]), "--fraction", "0.5"]
    args += ["--policy", "uncertainty", "--chunk", "8"]
    env = {**os.environ, "COMPATKIT_FASHION_MNIST": str(fake_fashion), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "compatkit", *args],
        env={**env, PAUSE_ENV: "600"},  # sleeps after each committed chunk: the kill lands there
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _read_until(p, "chunk 1/5 committed")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL
    # Killed: one chunk is in, the plan is pending, the index opens and searches.
    assert (idx / PLAN).is_file()
    info = describe(idx)
    assert info["pending_backfill"]["done"] == 8 and info["pending_backfill"]["planned"] == 36
    assert Gallery.open(idx).counts_by_version() == {0: 64, 1: 8}
    r = run_cli(args, fake_fashion)
    assert "1 chunk(s) already done by an interrupted run" in r.stdout
    assert "50.0% of 72 items" in r.stdout and not (idx / PLAN).exists()
    # The uninterrupted backfill of the same index with the same arguments.
    backfill(reference, models["v2"], 0.5, policy="uncertainty", chunk=8)
    a, b = Gallery.open(idx), Gallery.open(reference)
    np.testing.assert_array_equal(a.version_of, b.version_of)
    va, vb = a.vectors(dtype=np.float16), b.vectors(dtype=np.float16)
    assert va.tobytes() == vb.tobytes()  # bitwise


def test_backfill_and_curve_through_the_cli(idx, models, tiny, tmp_path, fake_fashion) -> None:
    r = run_cli(
        [
            "index",
            "backfill",
            str(idx),
            "--model",
            str(models["v2"]),
            "--fraction",
            "0.25",
            "--policy",
            "class",
            "--json",
        ],
        fake_fashion,
    )
    rep = json.loads(r.stdout)
    assert (
        rep["embedded"] == 18 and rep["new_fraction"] == 0.25 and rep["plan"]["policy"] == "class"
    )
    assert len(rep["plan"]["decided"]["class_order"]) == 6
    manifest = (idx / "manifest.json").read_bytes()
    out = tmp_path / "curve"
    r = run_cli(
        [
            "index",
            "curve",
            str(idx),
            str(tiny["query"]),
            "--old",
            str(models["v1"]),
            "--new",
            str(models["v2"]),
            "--out",
            str(out),
            "--steps",
            "4",
        ],
        fake_fashion,
    )
    assert (idx / "manifest.json").read_bytes() == manifest  # the index is untouched
    curve = json.loads((out / "curve.json").read_text())
    assert curve["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(curve["policies"]) == {"random", "class", "uncertainty"}
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 25% |" in r.stdout and "| 25% |" in (out / "curve.md").read_text()


def test_a_corrupt_shard_is_a_one_line_error(idx, fake_fashion) -> None:
    shard = idx / "shards" / "000001.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    r = run_cli(["index", "info", str(idx)], fake_fashion, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "000001.npy: truncated" in r.stderr
