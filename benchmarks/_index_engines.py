"""The engines ``bench_index.py`` measures, each run in a child process of its own.

Every worker reads the gallery from ``base.npy`` (float16, ``(n, d)``, memory-mapped) and the
queries from ``queries.npy`` (float32 unit rows) in the job's folder, and returns a JSON-able
dict of timings. A search worker also saves the ids each query got (``ids-NAME.npy``), from
which the parent computes recall@10 against the exact reference (FAISS ``IndexFlatIP``).

Gallery data: ``simplex`` (default) draws d-Simplex-like features, the kind compatkit's
models make: K = d + 1 classes, each item its class's unit vertex plus variation inside a
64-dimensional subspace shared by all classes and a little isotropic noise, renormalised (the
cosine of two items of one class is about 0.8, of two classes about 0: features near their
class's vertex, as a trained fixed classifier makes them). ``random`` draws
uniform unit vectors: no item has a near neighbour, the worst case for any approximate
index and a case no real gallery resembles. Speed of exact search does not depend on the
values; recall of an approximate index does.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["GEN_ROWS", "SINGLES", "make_data", "queries", "save_ids", "timed_searches", "unit_rows"]

GEN_ROWS = 65536
"""Vectors drawn, or read and written, per step (a float32 block of 256 MiB at d = 1023)."""
LATENT = 64
"""Dimensions of the within-class variation of the ``simplex`` data."""


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _simplex_rows(rng: np.random.Generator, n: int, d: int, basis: dict) -> np.ndarray:
    """``n`` items of random classes: vertex + 0.5 x latent variation + 0.2 x noise."""
    y = rng.integers(0, basis["vertices"].shape[0], size=n)
    z = rng.standard_normal((n, LATENT), dtype=np.float32) / np.sqrt(LATENT)
    e = rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    x = basis["vertices"][y] + 0.5 * z @ basis["latent"] + 0.2 * e
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(job: dict) -> dict:
    """Write ``base.npy`` (float16) and ``queries.npy`` (float32) into the job's folder."""
    n, d, kind = job["n"], job["dim"], job.get("data", "simplex")
    out = Path(job["dir"])
    rng = np.random.default_rng(0)
    basis = {
        "vertices": unit_rows(rng, d + 1, d),
        "latent": np.linalg.qr(rng.standard_normal((d, LATENT)))[0].T.astype(np.float32),
    }

    def draw(m: int) -> np.ndarray:
        return unit_rows(rng, m, d) if kind == "random" else _simplex_rows(rng, m, d, basis)

    base = np.lib.format.open_memmap(out / "base.npy", "w+", np.float16, (n, d))
    for a in range(0, n, GEN_ROWS):
        base[a : a + GEN_ROWS] = draw(min(GEN_ROWS, n - a))
    base.flush()
    del base
    np.save(out / "queries.npy", draw(job["nq"]))
    return {}


def queries(job: dict) -> np.ndarray:
    return np.load(Path(job["dir"]) / "queries.npy")


def base(job: dict) -> np.ndarray:
    return np.load(Path(job["dir"]) / "base.npy", mmap_mode="r")


def save_ids(job: dict, name: str, ids: np.ndarray) -> None:
    np.save(Path(job["dir"]) / f"ids-{name}.npy", np.asarray(ids, dtype=np.int64))


SINGLES = 8
"""Queries searched one at a time for the latency column (an online service's pattern)."""


def timed_searches(job: dict, name: str, search) -> dict:
    """``search(q) -> (nq, k) ids``: a warm-up of 8 queries, then each query count of
    ``job["counts"]`` once, timed; the ids of the largest search are saved. Then
    :data:`SINGLES` queries one at a time: ``one_s`` is their mean latency."""
    q = queries(job)
    search(q[:8])
    out = {}
    for c in job["counts"]:
        t0 = time.perf_counter()
        ids = search(q[:c])
        out[f"search_{c}_s"] = time.perf_counter() - t0
    save_ids(job, name, ids)
    t0 = time.perf_counter()
    for i in range(SINGLES):
        search(q[i : i + 1])
    out["one_s"] = (time.perf_counter() - t0) / SINGLES
    return out


# ----------------------------------------------------------------------------- FAISS


def faiss_flat(job: dict) -> dict:
    """The exact reference: the gallery as float32 in an in-memory ``IndexFlatIP``."""
    import faiss

    x = base(job)
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    for a in range(0, x.shape[0], GEN_ROWS):
        index.add(np.ascontiguousarray(x[a : a + GEN_ROWS], dtype=np.float32))
    build = time.perf_counter() - t0
    res = timed_searches(job, job["name"], lambda q: index.search(q, job["k"])[1])
    return {"build_s": build, **res}


# ----------------------------------------------------------------------------- the stores

LANCE_INDEXES = {
    "IVF_FLAT": [{"nprobes": 20}, {"nprobes": 60}],
    "IVF_PQ": [{"nprobes": 20, "refine_factor": 10}, {"nprobes": 60, "refine_factor": 10}],
    "IVF_HNSW_SQ": [{"nprobes": 20, "ef": 100}, {"nprobes": 60, "ef": 100}],
}
"""LanceDB's approximate indexes and the search settings tried on each (IVF partitions
probed, HNSW candidate list, refine factor: candidates reranked with the full vectors)."""
MILVUS_INDEXES = {"HNSW": [{"ef": 64}, {"ef": 256}]}
TRAIN = {"iterations": 10, "sample_rate": 64}
"""k-means training of LanceDB's IVF (and PQ): 10 iterations on 64 rows per partition
instead of LanceDB's 50 on 256, so that a 1M build fits a benchmark on 2 shared cores."""
LARGE = 200_000
"""Above this many items only the first LanceDB index (IVF_FLAT: k-means and one assignment
pass, no codebooks or graphs) is built unless ``--indexes`` names others: IVF_PQ took 1,075 s
and IVF_HNSW_SQ 289 s at 100k x 1023 on 2 shared cores, hours at 1M."""


def _uri(job: dict) -> str:
    return str(Path(job["dir"]) / ("gallery.db" if job["engine"] == "milvus" else "gallery"))


def store_build(job: dict) -> dict:
    """Ingest the gallery through compatkit's store (what ``index build`` writes)."""
    from compatkit.upgrade.store import Rows, create_store, default_dtype

    x = base(job)
    n, d = x.shape
    uri = _uri(job)
    t0 = time.perf_counter()
    s = create_store(uri, d, default_dtype(uri))
    for a in range(0, n, GEN_ROWS):
        p = np.arange(a, min(a + GEN_ROWS, n))
        s.add(
            Rows(
                p,
                np.asarray(x[p]),
                [str(i) for i in p],
                np.zeros(p.size, np.int64),
                [""] * p.size,
                ["0" * 64] * p.size,
            )
        )
    s.close()
    return {"build_s": time.perf_counter() - t0}


def store_index(job: dict) -> dict:
    from compatkit.upgrade.store import open_store

    s = open_store(_uri(job))
    t0 = time.perf_counter()
    s.create_index(job["index"], TRAIN if job["engine"] == "lancedb" else None)
    out = {"index_s": time.perf_counter() - t0, "info": s.index_info()}
    s.close()
    return out


def store_search(job: dict) -> dict:
    """Exact search (``params`` None) or the approximate index with ``params``."""
    from compatkit.upgrade.store import open_store

    s = open_store(_uri(job))
    params, k = job.get("params"), job["k"]
    try:
        return timed_searches(
            job,
            job["name"],
            lambda q: s.search(q, k, approx=params is not None, params=params).positions,
        )
    finally:
        s.close()


WORKERS = {
    "data": make_data,
    "faiss": faiss_flat,
    "store-build": store_build,
    "store-index": store_index,
    "store-search": store_search,
}
