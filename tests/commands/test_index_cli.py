"""``compatkit index`` through the real command line, on real checkpoints and image folders, on
LanceDB and on a Milvus Lite file: build, search (refused, forced, then accepted after
``compatkit check --record``), backfill (killed with SIGKILL mid-way, then resumed to the
gallery of an uninterrupted run), curve, info, optimize, what plain lancedb and pymilvus read
back, and one-line refusals (exit 2) of what cannot be served."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from compatkit.upgrade.backfill import PAUSE_ENV, backfill
from compatkit.upgrade.embed import load_embedder
from compatkit.upgrade.index import Gallery, load_for_model
from tests.upgrade.folders import tiny_folders
from tests.upgrade.index_helpers import ENGINES, gallery_uri, trained_models, wide_model

from .cli import run_cli

pytest.importorskip("lancedb")
pytest.importorskip("milvus_lite")
DOC = Path(__file__).parents[2] / "docs" / "upgrade-index.md"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return tiny_folders(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny) -> dict[str, Path]:
    return trained_models(tmp_path_factory, tiny)


@pytest.fixture(scope="module", params=ENGINES)
def built(request, models, tiny, tmp_path_factory, fake_fashion) -> str:
    """A gallery of the gallery folder by v1, built once per engine through the CLI."""
    out = gallery_uri(tmp_path_factory.mktemp("cli-index"), request.param)
    r = run_cli(
        ["index", "build", str(models["v1"]), str(tiny["gallery"]), "--out", out], fake_fashion
    )
    dtype = "float32" if request.param == "milvus-lite" else "float16"
    assert f"index {out}: 72 items, 15-d {dtype} ({request.param})" in r.stdout
    return out


@pytest.fixture
def idx(built: str, tmp_path: Path) -> str:
    """A private copy of the built gallery, for tests that change it."""
    return str(shutil.copytree(built, Path(tmp_path) / Path(built).name))


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_search_prints_neighbours_and_metrics(built, models, tiny, tmp_path, fake_fashion) -> None:
    out = tmp_path / "res.json"
    args = ["index", "search", built, str(tiny["query"]), "--model", str(models["v1"])]
    text = run_cli([*args, "-k", "3", "--show", "1", "--json", str(out)], fake_fashion).stdout
    res = json.loads(out.read_text())
    assert res["k"] == 3 and len(res["results"]) == 60 and res["warnings"] == []
    # The same search in this process, against a float64 ranking of the stored vectors.
    emb = load_embedder(models["v1"])
    data, qids = load_for_model(emb, str(tiny["query"]))
    q = emb.embed(data).numpy().astype(np.float64)
    with Gallery.open(built) as g:
        x = g.vectors(np.arange(72)).astype(np.float64)
        ids, labels = g.column("item_id"), g.column("label")
        classes = g.classes
    s = q @ x.T
    want = np.lexsort((np.broadcast_to(np.arange(72), s.shape), -s), axis=1)[:, :3]
    assert [r["id"] for r in res["results"]] == qids
    for i, r in enumerate(res["results"]):
        assert [n["id"] for n in r["neighbours"]] == [ids[p] for p in want[i]]
        assert r["neighbours"][0]["class"] == classes[labels[want[i, 0]]]
    hits = [r["neighbours"][0]["class"] == r["class"] for r in res["results"]]
    assert res["metrics"]["recall@1"] == pytest.approx(100 * np.mean(hits))
    assert 0 < res["metrics"]["mAP"] <= 100 and res["metrics"]["unanswerable"] == 0
    assert text.startswith("60 queries, top 3 by cosine (exact search)")
    assert text.count("query ") == 1 and "  3. " in text and "  4. " not in text


def _plain_counts(uri: str) -> dict[str, int]:
    """Counts per version read with plain lancedb or pymilvus, by the code the docs show."""
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    want = "MilvusClient(" if uri.endswith(".db") else "lancedb.connect("
    code = next(b for b in blocks if want in b and "counts" in b)
    scope: dict = {"IDX": uri}
    exec(code, scope)  # the documentation's own snippet
    if uri.endswith(".db"):  # Milvus Lite's in-process server holds the file until released
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)
    return scope["counts"]


@pytest.mark.slow  # a dozen command runs per engine, `compatkit check` among them
def test_the_workflow_end_to_end(idx, models, tiny, tmp_path, fake_fashion) -> None:
    v1, v2 = (load_embedder(models[k]).fingerprint for k in ("v1", "v2"))
    q2 = ["index", "search", idx, str(tiny["query"]), "--model", str(models["v2"]), "--no-map"]
    _one_line_error(
        run_cli(q2, fake_fashion, check=False), "refuses model", "no recorded check", "--force"
    )
    r = run_cli([*q2, "--force"], fake_fashion)
    assert "warning: --force: no recorded check" in r.stderr and "recall@1" in r.stdout
    # The gate's own verdict, recorded with the gallery (tolerance 100: passes).
    check = ["check", str(models["v1"]), str(models["v2"]), "--query", str(tiny["query"])]
    check += ["--gallery", str(tiny["gallery"]), "--record", idx, "--device", "cpu"]
    r = run_cli([*check, "--tolerance", "100", "--quiet"], fake_fashion, check=False)
    assert r.returncode == 0, r.stderr
    r = run_cli(q2, fake_fashion)
    assert "warning" not in r.stderr and "60 labelled queries" in r.stdout
    bf = ["index", "backfill", idx, "--model", str(models["v2"]), "--fraction", "0.25"]
    rep = json.loads(run_cli([*bf, "--policy", "class", "--json"], fake_fashion).stdout)
    assert rep["embedded"] == 18 and rep["new_fraction"] == 0.25
    assert len(rep["plan"]["decided"]["class_order"]) == 6
    info = json.loads(run_cli(["index", "info", idx, "--json"], fake_fashion).stdout)
    got = {v["fingerprint"]: v["vectors"] for v in info["versions"]}
    assert got == {v1: 54, v2: 18} and info["checks"][0]["compatible"] is True
    assert _plain_counts(idx) == got  # plain lancedb / pymilvus read the same
    r = run_cli(
        [
            "index",
            "curve",
            idx,
            str(tiny["query"]),
            "--old",
            str(models["v1"]),
            "--new",
            str(models["v2"]),
            "--out",
            str(tmp_path / "c"),
            "--steps",
            "4",
        ],
        fake_fashion,
    )
    curve = json.loads((tmp_path / "c" / "curve.json").read_text())
    assert curve["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0] and "| 25% |" in r.stdout
    assert (tmp_path / "c" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kind = "IVF_FLAT"
    r = run_cli(["index", "optimize", idx, "--index-type", kind, "--partitions", "2"], fake_fashion)
    assert "vector index, 72 vectors indexed" in r.stdout
    r = run_cli(
        [
            "index",
            "info",
            idx,
            "--recall",
            str(tiny["query"]),
            "--model",
            str(models["v2"]),
            "--nprobes",
            "2",
        ],
        fake_fashion,
    )
    assert re.search(r"recall@10 of IVF_?FLAT against exact search: 1\.0000 over 60", r.stdout)
    r = run_cli([*q2, "--approx", "--nprobes", "2", "--show", "0"], fake_fashion)
    assert "(IVF" in r.stdout.splitlines()[0]
    r = run_cli(["index", "info", idx, "--verify"], fake_fashion)
    assert "verify: every entity agrees with the records" in r.stdout


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


def _env(fake_fashion: Path, **extra) -> dict:
    return {
        **os.environ,
        "COMPATKIT_FASHION_MNIST": str(fake_fashion),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _gallery_state(uri: str) -> tuple[list[str], bytes]:
    with Gallery.open(uri) as g:
        return g.column("version"), g.vectors(np.arange(g.count)).tobytes()


def _kill_after(args: list[str], fake_fashion: Path, line: str) -> None:
    """Run ``compatkit ARGS``, sleeping after each committed chunk, and SIGKILL it once it
    printed ``line``."""
    p = subprocess.Popen(
        [sys.executable, "-m", "compatkit", *args],
        env=_env(fake_fashion, **{PAUSE_ENV: "600"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _read_until(p, line)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_backfill_killed_mid_way_resumes_to_the_uninterrupted_result(
    idx, models, tmp_path, fake_fashion
) -> None:
    reference = str(shutil.copytree(idx, tmp_path / ("ref" + Path(idx).suffix)))
    args = ["index", "backfill", idx, "--model", str(models["v2"]), "--fraction", "0.5"]
    args += ["--policy", "uncertainty", "--chunk", "8"]
    _kill_after(args, fake_fashion, "chunk 1/5 committed")
    # Killed: one chunk is in, the plan is pending, the gallery opens and is searched.
    info = json.loads(run_cli(["index", "info", idx, "--json"], fake_fashion).stdout)
    assert info["pending_backfill"]["done"] == 8 and info["pending_backfill"]["planned"] == 36
    assert sorted(v["vectors"] for v in info["versions"]) == [8, 64]
    r = run_cli(args, fake_fashion)
    assert "1 chunk(s) already done by an interrupted run" in r.stdout
    assert "50.0% of 72 items" in r.stdout
    # The uninterrupted backfill of the same gallery with the same arguments.
    backfill(reference, models["v2"], 0.5, policy="uncertainty", chunk=8)
    assert _gallery_state(idx) == _gallery_state(reference)  # same versions, same bytes
    with Gallery.open(idx) as g:
        assert g.store.get_record("plan") is None


SEARCHER = """
import json, sys
import numpy as np
from compatkit.upgrade.store import open_store
q = np.random.default_rng(0).standard_normal((4, 15)).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
for _ in range(int(sys.argv[2])):
    s = open_store(sys.argv[1])
    h = s.search(q, 72)
    print(json.dumps({"pos": h.positions.tolist(),
                      "versions": [h.rows[int(p)]["version"] for p in h.positions[0]]}),
          flush=True)
"""


@pytest.mark.slow
def test_a_search_in_another_process_sees_every_item_once_during_a_backfill(
    models, tiny, tmp_path, fake_fashion
) -> None:
    idx = gallery_uri(tmp_path, "lancedb")
    run_cli(["index", "build", str(models["v1"]), str(tiny["gallery"]), "--out", idx], fake_fashion)
    v2 = load_embedder(models["v2"]).fingerprint
    args = ["index", "backfill", idx, "--model", str(models["v2"]), "--fraction", "1"]
    p = subprocess.Popen(
        [sys.executable, "-m", "compatkit", *args, "--chunk", "8"],
        env=_env(fake_fashion, **{PAUSE_ENV: "0.2"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = []
    try:
        _read_until(p, "chunk 1/9 committed")
        while p.poll() is None:
            r = subprocess.run(
                [sys.executable, "-c", SEARCHER, idx, "3"],
                env=_env(fake_fashion),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert r.returncode == 0, r.stderr
            seen += [json.loads(line) for line in r.stdout.splitlines()]
    finally:
        p.kill() if p.poll() is None else None
        p.wait()
    assert p.returncode == 0 and len(seen) >= 3
    for s in seen:  # every item exactly once, for every query, whatever the moment
        assert all(sorted(row) == list(range(72)) for row in s["pos"])
        assert sum(v == v2 for v in s["versions"]) % 8 == 0  # whole chunks only
    assert _gallery_state(idx)[0] == [v2] * 72


@pytest.mark.slow
def test_refusals_are_one_line_with_exit_2(built, models, tiny, tmp_path, fake_fashion) -> None:
    wide = wide_model(tiny, tmp_path / "k32.pt")
    search = ["index", "search", built, str(tiny["query"]), "--no-map"]
    _one_line_error(
        run_cli([*search, "--model", str(wide), "--force"], fake_fashion, check=False),
        "31-dimensional features but index",
        "cannot be compared",
    )
    _one_line_error(
        run_cli([*search, "--model", str(models["other"])], fake_fashion, check=False),
        "refuses model",
        "no recorded check",
    )
    import lancedb

    foreign = tmp_path / "songs"
    lancedb.connect(str(foreign)).create_table("songs", data=[{"vector": [0.0, 1.0]}])
    _one_line_error(
        run_cli(["index", "info", str(foreign)], fake_fashion, check=False),
        "not a compatkit gallery",
    )
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    uri = f"http://127.0.0.1:{port}"
    _one_line_error(
        run_cli(
            ["index", "info", uri, "--collection", "g", "--timeout", "2"], fake_fashion, check=False
        ),
        uri,
        "does not answer within 2 s",
    )
    _one_line_error(
        run_cli(
            ["index", "build", str(models["v1"]), str(tiny["gallery"]), "--out", built],
            fake_fashion,
            check=False,
        ),
        "already exists",
    )


@pytest.mark.slow
def test_damaged_galleries_refuse_before_anything_runs(idx, models, tiny, fake_fashion) -> None:
    from compatkit.upgrade.store import open_store

    s = open_store(idx)
    s.put_records({"check/0": {"recorded": "x", "verdict": {"format": "?"}}})  # hand-edited
    s.close()
    check = [
        "check",
        str(models["v1"]),
        str(models["v2"]),
        "--query",
        str(tiny["query"]),
        "--gallery",
        str(tiny["gallery"]),
        "--record",
        idx,
    ]
    t0 = time.monotonic()
    r = run_cli(check, fake_fashion, check=False)
    _one_line_error(r, "record 'check/0' is malformed")
    assert r.stdout == "" and time.monotonic() - t0 < 120  # refused before the check ran
    s = open_store(idx)
    s.put_records({"check/0": None, "plan": {"format": "compatkit-backfill-plan", "order": [1]}})
    s.close()
    bf = ["index", "backfill", idx, "--model", str(models["v2"]), "--fraction", "0.5"]
    _one_line_error(run_cli(bf, fake_fashion, check=False), "record 'plan'")
    with Gallery.open(idx) as g:  # nothing written because of it
        assert len(g.versions) == 1 and list(g.counts.values()) == [72]


# ----------------------------------------------------------------------------- workers


def _lance_gallery(models, tiny, base: Path, fake_fashion) -> str:
    uri = gallery_uri(base, "lancedb")
    run_cli(["index", "build", str(models["v1"]), str(tiny["gallery"]), "--out", uri], fake_fashion)
    return uri


@pytest.mark.slow
def test_workers_at_once_end_in_the_one_process_gallery(
    models, tiny, tmp_path, fake_fashion
) -> None:
    idx = _lance_gallery(models, tiny, tmp_path / "w", fake_fashion)
    reference = str(shutil.copytree(idx, tmp_path / "ref"))
    args = ["index", "backfill", idx, "--model", str(models["v2"]), "--fraction", "0.75"]
    r = run_cli([*args, "--policy", "class", "--chunk", "4", "--workers", "3"], fake_fashion)
    assert "3 workers embedded 54 items in 14 chunks; 75.0% of 72 items" in r.stdout
    for i in (1, 2, 3):  # every worker committed its own chunks, at the same time as the others
        assert re.search(rf"^\[{i}/3\] chunk \d+/14 committed by worker {i}/3", r.stderr, re.M)
    backfill(reference, models["v2"], 0.75, policy="class", chunk=4)
    assert _gallery_state(idx) == _gallery_state(reference)
    with Gallery.open(idx) as g:
        assert g.store.get_record("plan") is None


@pytest.mark.slow
def test_a_killed_worker_reruns_its_share_to_the_one_process_gallery(
    models, tiny, tmp_path, fake_fashion
) -> None:
    idx = _lance_gallery(models, tiny, tmp_path / "w", fake_fashion)
    reference = str(shutil.copytree(idx, tmp_path / "ref"))
    args = ["index", "backfill", idx, "--model", str(models["v2"]), "--fraction", "0.5"]
    args += ["--chunk", "8", "--seed", "5"]
    r = run_cli([*args, "--plan-only"], fake_fashion)
    assert "backfill plan recorded: 36 items in 5 chunks of 8" in r.stdout
    _kill_after([*args, "--worker", "1/2"], fake_fashion, "chunk 1/5 committed by worker 1/2")
    r = run_cli([*args, "--worker", "2/2"], fake_fashion)
    assert "worker 2/2 (2 of 5 chunks): 16 items embedded" in r.stdout
    assert "other workers' chunks are still out" in r.stdout
    info = json.loads(run_cli(["index", "info", idx, "--json"], fake_fashion).stdout)
    assert (info["pending_backfill"]["done"], info["pending_backfill"]["planned"]) == (24, 36)
    r = run_cli([*args, "--worker", "1/2"], fake_fashion)  # the killed worker's own command
    assert "worker 1/2 (3 of 5 chunks): 12 items embedded, 1 chunk(s) already done" in r.stdout
    assert "50.0% of 72 items" in r.stdout and "still out" not in r.stdout
    backfill(reference, models["v2"], 0.5, chunk=8, seed=5)
    assert _gallery_state(idx) == _gallery_state(reference)


def test_worker_options_are_refused_in_one_line(models, tmp_path, built, fake_fashion) -> None:
    args = ["index", "backfill", built, "--model", str(models["v2"]), "--fraction", "0.5"]
    r = run_cli([*args, "--worker", "3/2"], fake_fashion, check=False)
    _one_line_error(r, "--worker '3/2': write I/N")
    r = run_cli([*args, "--devices", "0"], fake_fashion, check=False)
    _one_line_error(r, "--devices spreads the processes of --workers N")
    r = run_cli([*args, "--worker", "1/2"], fake_fashion, check=False)
    if built.endswith(".db"):
        _one_line_error(r, "Milvus Lite", "serves one process at a time")
        r = run_cli([*args, "--workers", "2"], fake_fashion, check=False)
        _one_line_error(r, "--workers 2: Milvus Lite")
    else:
        _one_line_error(r, "no backfill plan for these arguments", "--plan-only")
