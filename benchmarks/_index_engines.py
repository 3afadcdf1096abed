"""The engines ``bench_index.py`` measures, each run in a child process of its own.

Every worker reads the gallery from ``base.npy`` (float16, ``(n, d)``, memory-mapped) and the
queries from ``queries.npy`` (float32 unit rows) in the job's folder, and returns a JSON-able
dict of timings. A search worker also saves the ids each query got (``ids-NAME.npy``), from
which the parent computes recall@10 against the exact reference (FAISS ``IndexFlatIP``).

Gallery data: ``simplex`` (default) draws d-Simplex-like features, the kind compatkit's
models make: K = d + 1 classes, each item its class's unit vertex plus variation inside a
64-dimensional subspace shared by all classes and a little isotropic noise, renormalised (the
cosine of two items of one class is about 0.5, of two classes about 0). ``random`` draws
uniform unit vectors: no item has a near neighbour, the worst case for any approximate
index and a case no real gallery resembles. Speed of exact search does not depend on the
values; recall of an approximate index does.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["GEN_ROWS", "make_data", "queries", "save_ids", "timed_searches", "unit_rows"]

GEN_ROWS = 65536
"""Vectors drawn, or read and written, per step (a float32 block of 256 MiB at d = 1023)."""
LATENT = 64
"""Dimensions of the within-class variation of the ``simplex`` data."""


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _simplex_rows(rng: np.random.Generator, n: int, d: int, basis: dict) -> np.ndarray:
    """``n`` items of random classes: vertex + 0.8 x latent variation + 0.3 x noise."""
    y = rng.integers(0, basis["vertices"].shape[0], size=n)
    z = rng.standard_normal((n, LATENT), dtype=np.float32) / np.sqrt(LATENT)
    e = rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    x = basis["vertices"][y] + 0.8 * z @ basis["latent"] + 0.3 * e
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


def timed_searches(job: dict, name: str, search) -> dict:
    """``search(q) -> (nq, k) ids``: a warm-up of 8 queries, then each query count of
    ``job["counts"]`` once, timed; the ids of the largest search are saved."""
    q = queries(job)
    search(q[:8])
    out = {}
    for c in job["counts"]:
        t0 = time.perf_counter()
        ids = search(q[:c])
        out[f"search_{c}_s"] = time.perf_counter() - t0
    save_ids(job, name, ids)
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


# ----------------------------------------------------------------------------- shard store


def shards_build(job: dict) -> dict:
    """The ``.npy`` shard store (``compatkit.upgrade.index_store``) as it was before the
    vector databases: float16 shards of 65,536 rows and a JSON manifest."""
    from compatkit.upgrade.index_store import IndexBuilder

    x = base(job)
    n, d = x.shape
    t0 = time.perf_counter()
    with IndexBuilder(Path(job["dir"]) / "shards", d, "float16", source={"kind": "bench"}) as b:
        b.set_version("0" * 64, {"feat_dim": d, "in_channels": 3, "head": "simplex"}, "bench")
        for a in range(0, n, GEN_ROWS):
            b.add(np.asarray(x[a : a + GEN_ROWS]))
        b.finish([str(i) for i in range(n)], None, None)
    return {"build_s": time.perf_counter() - t0}


def shards_search(job: dict) -> dict:
    from compatkit.upgrade.index_search import search
    from compatkit.upgrade.index_store import Gallery

    g = Gallery.open(Path(job["dir"]) / "shards")
    be = job["backend"]
    return timed_searches(
        job, job["name"], lambda q: search(g, q, k=job["k"], backend=be).positions
    )


WORKERS = {
    "data": make_data,
    "faiss": faiss_flat,
    "shards-build": shards_build,
    "shards-search": shards_search,
}
