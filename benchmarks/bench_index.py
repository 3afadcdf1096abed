"""The gallery engines of ``compatkit index`` side by side: build rate, search throughput of
128 and 1,024 queries (top 10), peak memory and recall@10 against exact search, at 100k and
1M vectors of 1,023 and 511 dimensions.

Engines (``--engines``): ``faiss``, an in-memory ``IndexFlatIP`` of the gallery as float32,
the exact reference every other row is compared with; ``lancedb`` and ``milvus`` (Milvus
Lite), through compatkit's own store (:mod:`compatkit.upgrade.store`), as ``compatkit index``
uses them: build (ingest), exact search, then each approximate index the engine offers with a
few search settings (``_index_engines.py``). Every search goes through the store's rescoring
of each query's k + 16 candidates in float64. Each measurement runs in a fresh child
process, which reports its own peak resident set (``VmHWM`` of ``/proc/self/status``), so no
figure includes what another engine allocated. The data (see ``_index_engines.py``:
d-Simplex-like class-structured vectors by default) is drawn once per size into a float16
``.npy`` file that every engine reads; drawing it is not timed.

recall@10 of a row = the mean over the 1,024 queries of |its top 10 ∩ FAISS's top 10| / 10.

    python benchmarks/bench_index.py [--pairs 100000x1023 1000000x1023 ...]
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

from _common import base_parser, finish, setup
from _index_engines import SINGLES
from _results import md_table

NAME = "bench_index"
TITLE = "bench_index: the gallery engines side by side"
K = 10

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


def worker(job: dict) -> dict:
    """Run one measurement in this process (a child of :func:`main`); adds its peak RSS."""
    import torch

    from _index_engines import WORKERS

    torch.set_num_threads(job["threads"])
    try:
        import faiss

        faiss.omp_set_num_threads(job["threads"])
    except ImportError:
        pass
    base = peak_rss()
    res = WORKERS[job["phase"]](job)
    return {**res, "peak_rss": peak_rss(), "import_rss": base}


def _child(job: dict) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(job["threads"])}
    r = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode != 0:
        raise RuntimeError(f"{job['phase']} (n={job['n']}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _recall(folder: Path, name: str) -> float:
    import numpy as np

    truth = np.load(folder / "ids-faiss.npy")
    got = np.load(folder / f"ids-{name}.npy")
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _measure(
    job: dict, engines: list[str], milvus_max: int, only: list[str] | None = None
) -> list[dict]:
    """Every engine's rows at one size and dimension (the data is drawn first)."""
    folder = Path(job["dir"])
    _child({**job, "phase": "data"})
    rows = []

    def row(engine: str, name: str, build: dict, search: dict, **extra) -> None:
        rows.append(
            {
                "engine": engine,
                "name": name,
                "build": build,
                "search": search,
                "recall": _recall(folder, name),
                **extra,
            }
        )
        print(f"n={job['n']} d={job['dim']} {name}: {json.dumps(rows[-1])}", file=sys.stderr)

    ref = _child({**job, "phase": "faiss", "name": "faiss"})
    row("FAISS IndexFlatIP (in memory, float32)", "faiss", ref, ref)
    from _index_engines import LANCE_INDEXES, LARGE, MILVUS_INDEXES

    for engine in [e for e in engines if e != "faiss"]:
        if engine == "milvus" and job["n"] > milvus_max:
            continue
        label = "LanceDB" if engine == "lancedb" else "Milvus Lite"
        j = {**job, "engine": engine}
        build = _child({**j, "phase": "store-build"})
        disk = _disk(folder / ("gallery.db" if engine == "milvus" else "gallery"))
        name = f"{engine}-exact"
        s = _child({**j, "phase": "store-search", "name": name})
        row(f"{label}, exact", name, build, s, disk=disk)
        indexes = LANCE_INDEXES if engine == "lancedb" else MILVUS_INDEXES
        if job["quick"]:  # one index of each kind, one setting: checks that it runs
            indexes = {t: v[:1] for t, v in indexes.items() if t in ("IVF_HNSW_SQ", "HNSW")}
        elif only is not None:
            indexes = {t: v for t, v in indexes.items() if t in only}
        elif job["n"] > LARGE and engine == "lancedb":
            indexes = dict(list(indexes.items())[:1])
        for index, settings in indexes.items():
            try:
                ix = _child({**j, "phase": "store-index", "index": index})
            except RuntimeError as e:
                print(f"{engine} {index}: {e}", file=sys.stderr)
                continue
            for params in settings:
                name = f"{engine}-{index}-" + "-".join(f"{k}{v}" for k, v in params.items())
                s = _child({**j, "phase": "store-search", "name": name, "params": params})
                shown = ", ".join(f"{k} {v}" for k, v in params.items())
                row(f"{label}, {index} ({shown})", name, build, s, index_s=ix["index_s"])
        shutil.rmtree(folder / ("gallery.db" if engine == "milvus" else "gallery"))
    return rows


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
    p.add_argument(
        "--pairs",
        nargs="+",
        default=["100000x1023", "100000x511", "1000000x1023", "1000000x511"],
        metavar="NxD",
        help="galleries to measure: items x dimensions, in this order",
    )
    p.add_argument(
        "--engines",
        nargs="+",
        default=["faiss", "lancedb", "milvus"],
        choices=["faiss", "lancedb", "milvus"],
    )
    p.add_argument(
        "--milvus-max",
        type=int,
        default=100_000,
        help="largest gallery given to Milvus Lite (default 100000: see the results' notes)",
    )
    p.add_argument(
        "--indexes",
        nargs="*",
        default=None,
        metavar="TYPE",
        help="approximate indexes to build (default: each engine's all, LanceDB's IVF_FLAT "
        "only above 200k items); none: exact search only",
    )
    p.add_argument(
        "--section",
        default=NAME,
        help=f"section of the results file to write (default {NAME}; e.g. {NAME}_1m for a run "
        "at other sizes that should not replace it)",
    )
    p.add_argument("--data", default="simplex", choices=("simplex", "random"))
    p.add_argument("--tmp", default=None, help="folder for the temporary data (default: system)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    setup(args)
    if args.quick:
        args.pairs = ["3000x64"]
    try:
        pairs = [tuple(int(v) for v in p.lower().split("x")) for p in args.pairs]
    except ValueError:
        raise SystemExit(f"--pairs {args.pairs}: write each as NxD, e.g. 100000x1023") from None
    import torch

    threads = args.threads or torch.get_num_threads()
    counts = [16, 64] if args.quick else [128, 1024]
    figures: dict = {"load_start": _load(), "runs": []}
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.tmp))
    try:
        for n, d in pairs:
            folder = tmp / f"{n}-{d}"
            folder.mkdir()
            job = {"n": n, "dim": d, "dir": str(folder), "threads": threads, "k": K}
            job |= {"nq": max(counts), "counts": counts, "data": args.data}
            job["quick"] = args.quick
            rows = _measure(job, args.engines, args.milvus_max, args.indexes)
            figures["runs"].append({"n": n, "dim": d, "rows": rows})
            shutil.rmtree(folder)
            if len(figures["runs"]) < len(pairs):  # what is measured so far, in case of a stop
                _write(args, argv, figures, threads, counts, t_start, partial=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write(args, argv, figures, threads, counts, t_start)
    return figures


def _write(args, argv, figures: dict, threads: int, counts: list[int], t0: float, partial=False):
    figures["load_end"] = _load()
    figures["minutes"] = (time.perf_counter() - t0) / 60
    shown = _without_tmp(sys.argv[1:] if argv is None else argv)
    body = _body(figures, threads, counts, args)
    if partial:
        body += "\n\n(Partial: the run goes on with the next gallery; rerun to complete.)"
    title = TITLE if args.section == NAME else f"{TITLE} ({args.section})"
    finish(args.section, title, __file__, shown, body, "cpu", results=args.results)


def _without_tmp(argv: list[str]) -> list[str]:
    """The arguments without ``--tmp DIR`` and ``--results FILE``: where the scratch data and
    the results went is not part of what was measured, and it would put a path of this
    machine into the results."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--tmp", "--results"):
            skip = True
        elif not a.startswith(("--tmp=", "--results=")):
            out.append(a)
    return out


def _body(fig: dict, threads: int, counts: list[int], args: argparse.Namespace) -> str:
    head = [
        "gallery",
        "engine",
        "build rate",
        f"search {counts[0]} q",
        f"search {counts[1]} q",
        "1 query at a time",
        "time / FAISS",
        "recall@10",
        "peak memory build / search",
    ]
    rows = []
    for run in fig["runs"]:
        ref = run["rows"][0]["search"][f"search_{counts[1]}_s"]
        for r in run["rows"]:
            b, s = r["build"], r["search"]
            rate = f"{run['n'] / b['build_s']:,.0f} vectors/s"
            if r.get("index_s") is not None:
                rate = f"+ index {r['index_s']:,.0f} s"
            cells = [f"{run['n']:,} x {run['dim']}", r["engine"], rate]
            for c in counts:
                cells.append(f"{c / s[f'search_{c}_s']:,.1f} q/s")
            cells.append(f"{1000 * s['one_s']:,.1f} ms" if "one_s" in s else "—")
            cells += [
                f"{s[f'search_{counts[1]}_s'] / ref:.2f}",
                f"{r['recall']:.4f}",
                f"{_mib(b['peak_rss'])} / {_mib(s['peak_rss'])}",
            ]
            rows.append(cells)
    imp = fig["runs"][0]["rows"][0]["search"]["import_rss"]
    lines = [
        f"Data: {args.data} (see `_index_engines.py`), float16 on disk; queries drawn alike; "
        f"top {K} by inner product of unit vectors; {threads} thread(s) for torch and FAISS. "
        "Each engine builds and searches in fresh processes; peak memory is that process's "
        f"peak resident set (`VmHWM`), of which importing torch, numpy and faiss alone is "
        f"{_mib(imp)}. time / FAISS: the {counts[1]}-query search against the in-memory exact "
        "reference measured in the same run. 1 query at a time: the mean latency of "
        f"{SINGLES} queries searched one by one, as an online service sends them (an exact "
        "scan then reads the whole gallery per query).",
        "",
        md_table(head, rows),
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
