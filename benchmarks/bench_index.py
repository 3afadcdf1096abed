"""The versioned gallery (``compatkit index``) at 10k, 100k and 1M vectors of 1,023 dimensions:
build and search throughput and peak memory, FAISS against torch.

Vectors are synthetic (random unit rows: speed and memory do not depend on their
values). Each measurement runs in a fresh child process, which reports its own
peak resident set (``VmHWM`` of ``/proc/self/status``) and its timings as one
JSON line, so no figure includes what another phase allocated:

- ``build``: :class:`compatkit.upgrade.index_store.IndexBuilder` writes the
  vectors as float16 ``.npy`` shards (65,536 rows each) and the manifest; the
  time to draw the random vectors is measured apart and left out;
- ``search-torch`` / ``search-faiss``: one search of ``--queries`` queries
  (top 10) over the memory-mapped gallery after a warm-up search: the peak
  memory of a search with each backend;
- ``compare``: both backends in one process, interleaved (torch, faiss,
  torch, ...) after a warm-up of each, median time per backend, and a check
  that both return identical ids and scores.

The index lives in a temporary folder (``--tmp``, default the system's) that is
deleted at the end; 1M vectors take 2 GB there. On Linux only (``/proc``).

    python benchmarks/bench_index.py [--sizes 10000 100000 1000000] [--queries 128]
    python benchmarks/bench_index.py --quick    # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, finish, median, setup
from _results import md_table

NAME = "bench_index"
TITLE = "bench_index: build and search of the versioned gallery, FAISS against torch"
BUDGET = 4 * 2**30
"""Resident-memory budget of a search over a memory-mapped 1M x 1023 float16 gallery."""
GEN_ROWS = 65536
"""Vectors drawn and added per step of a build (a float32 block of 256 MiB at d = 1023)."""

__all__ = ["main", "peak_rss", "worker"]


def peak_rss() -> int:
    """Peak resident set of this process in bytes (``VmHWM``), 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _unit_rows(rng, n: int, d: int):
    import numpy as np

    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _build(job: dict) -> dict:
    import numpy as np

    from compatkit.upgrade.index_store import IndexBuilder

    n, d, out = job["n"], job["dim"], Path(job["out"])
    rng = np.random.default_rng(0)
    gen = 0.0
    t0 = time.perf_counter()
    with IndexBuilder(out, d, "float16", source={"kind": "synthetic"}) as b:
        b.set_version("0" * 64, {"feat_dim": d, "in_channels": 3, "head": "simplex"}, "synthetic")
        for a in range(0, n, GEN_ROWS):
            g0 = time.perf_counter()
            x = _unit_rows(rng, min(GEN_ROWS, n - a), d)
            gen += time.perf_counter() - g0
            b.add(x)
        b.finish([str(i) for i in range(n)], None, None)
    total = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"build_s": total - gen, "generate_s": gen, "disk_bytes": size}


def _queries(job: dict):
    import numpy as np

    return _unit_rows(np.random.default_rng(1), job["queries"], job["dim"])


def _search(job: dict) -> dict:
    from compatkit.upgrade.index_search import search
    from compatkit.upgrade.index_store import Gallery

    q = _queries(job)
    t0 = time.perf_counter()
    g = Gallery.open(job["out"])
    open_s = time.perf_counter() - t0
    search(g, q, k=job["k"], backend=job["backend"])  # warm-up: page cache, thread pools
    t0 = time.perf_counter()
    search(g, q, k=job["k"], backend=job["backend"])
    return {"open_s": open_s, "search_s": time.perf_counter() - t0}


def _compare(job: dict) -> dict:
    import numpy as np

    from compatkit.upgrade.index_search import search
    from compatkit.upgrade.index_store import Gallery

    q = _queries(job)
    g = Gallery.open(job["out"])
    times: dict[str, list[float]] = {"torch": [], "faiss": []}
    results = {}
    for b in times:  # warm-up of each
        results[b] = search(g, q, k=job["k"], backend=b)
    for _ in range(job["repeats"]):
        for b in times:
            t0 = time.perf_counter()
            search(g, q, k=job["k"], backend=b)
            times[b].append(time.perf_counter() - t0)
    same = bool(
        np.array_equal(results["torch"].positions, results["faiss"].positions)
        and np.array_equal(results["torch"].scores, results["faiss"].scores)
    )
    return {"torch_s": median(times["torch"]), "faiss_s": median(times["faiss"]), "identical": same}


def worker(job: dict) -> dict:
    """Run one measurement in this process (a child of :func:`main`); adds its peak RSS."""
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    try:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
    except ImportError:
        pass
    base = peak_rss()
    res = {"build": _build, "search": _search, "compare": _compare}[job["phase"]](job)
    return {**res, "peak_rss": peak_rss(), "import_rss": base}


def _child(job: dict) -> dict:
    r = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if r.returncode != 0:
        raise RuntimeError(f"{job['phase']} (n={job['n']}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _load() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " / ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=1023, help="vector dimension (default 1023)")
    p.add_argument("--queries", type=int, default=128, help="queries per search (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed searches per backend")
    p.add_argument("--tmp", default=None, help="folder for the temporary index (default: system)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    setup(args)
    if args.quick:
        args.sizes, args.dim, args.queries, args.repeats = [3000], 64, 16, 1
    import torch

    from compatkit.retrieval import faiss_available

    if not faiss_available():
        raise SystemExit("bench_index compares FAISS with torch: pip install 'compatkit[faiss]'")
    threads = args.threads or torch.get_num_threads()
    figures: dict = {"load_start": _load(), "sizes": {}}
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.tmp))
    try:
        for n in args.sizes:
            job = {"n": n, "dim": args.dim, "out": str(tmp / f"idx-{n}"), "threads": threads}
            job |= {"queries": args.queries, "k": 10, "repeats": args.repeats}
            row = {"build": _child({**job, "phase": "build"})}
            for b in ("torch", "faiss"):
                row[b] = _child({**job, "phase": "search", "backend": b})
            row["compare"] = _child({**job, "phase": "compare"})
            figures["sizes"][n] = row
            shutil.rmtree(job["out"])
            print(f"n={n}: {json.dumps(row)}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["load_end"] = _load()
    figures["minutes"] = (time.perf_counter() - t_start) / 60
    shown = _without_tmp(sys.argv[1:] if argv is None else argv)
    finish(NAME, TITLE, __file__, shown, _body(args, figures, threads), "cpu", results=args.results)
    return figures


def _without_tmp(argv: list[str]) -> list[str]:
    """The arguments without ``--tmp DIR``: where the scratch index went is not part of what
    was measured, and it would put a path of this machine into the results."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--tmp":
            skip = True
        elif not a.startswith("--tmp="):
            out.append(a)
    return out


def _body(args: argparse.Namespace, fig: dict, threads: int) -> str:
    rows_b, rows_s = [], []
    for n, r in fig["sizes"].items():
        b = r["build"]
        rows_b.append(
            [
                f"{n:,}",
                f"{n / b['build_s']:,.0f} vectors/s",
                f"{b['build_s']:.1f} s",
                _mib(b["disk_bytes"]),
                _mib(b["peak_rss"]),
            ]
        )
        c = r["compare"]
        fits = max(r["torch"]["peak_rss"], r["faiss"]["peak_rss"]) <= BUDGET
        rows_s.append(
            [
                f"{n:,}",
                f"{args.queries / c['torch_s']:,.1f} q/s ({c['torch_s']:.2f} s)",
                f"{args.queries / c['faiss_s']:,.1f} q/s ({c['faiss_s']:.2f} s)",
                f"{c['torch_s'] / c['faiss_s']:.2f}",
                "yes" if c["identical"] else "**no**",
                _mib(r["torch"]["peak_rss"]),
                _mib(r["faiss"]["peak_rss"]),
                "yes" if fits else "**no**",
                f"{r['torch']['open_s']:.2f} s",
            ]
        )
    imp = fig["sizes"][next(iter(fig["sizes"]))]["torch"]["import_rss"]
    lines = [
        f"Synthetic unit vectors of {args.dim} dimensions, stored as float16 `.npy` shards of "
        f"65,536 rows; searches of {args.queries} queries for their top 10 (exact cosine, "
        f"candidates rescored in float64); {threads} thread(s) for torch and FAISS. Each "
        "figure comes from a fresh process; peak memory is that process's peak resident "
        f"set (`VmHWM`), of which importing torch, numpy and faiss alone is {_mib(imp)}.",
        "",
        "Build (vectors/s written, the drawing of random vectors left out):",
        "",
        md_table(["gallery", "build rate", "build time", "on disk", "peak memory"], rows_b),
        "",
        "Search over the memory-mapped gallery (median of "
        f"{args.repeats} interleaved runs after a warm-up; ratio = torch time / FAISS time):",
        "",
        md_table(
            [
                "gallery",
                "torch",
                "FAISS",
                "ratio",
                "identical results",
                "peak memory, torch",
                "peak memory, FAISS",
                "within 4 GiB",
                "open (manifest, ids, mapping)",
            ],
            rows_s,
        ),
        "",
        f"Load average (1, 5, 15 min) of the machine: {fig['load_start']} at the start, "
        f"{fig['load_end']} at the end; the cores were shared with other work while this ran "
        f"({fig['minutes']:.1f} min), so absolute rates are pessimistic and the ratios are "
        "the figures to carry over.",
    ]
    if args.quick:
        lines += ["", "(--quick: tiny sizes; these figures measure nothing.)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
