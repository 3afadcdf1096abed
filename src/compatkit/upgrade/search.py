"""``compatkit index search``: the gated search, with recall@1 and mAP for labelled queries,
and the recall of an approximate index against exact search (``index info --recall``).

Exact search is the default. An approximate index (``approx=True``) answers from the
engine's vector index; its recall@10 against exact search on the user's own queries is what
:func:`measure_recall` reports, since an index's recall depends on the data it indexes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..retrieval import mean_average_precision
from .index import (
    Gallery,
    class_lookup,
    embed_all,
    load_for_model,
    require_dim,
    require_searchable,
    short,
)
from .store import DEFAULT_TIMEOUT, Hits

__all__ = ["measure_recall", "search_index", "search_metrics"]

MAP_AUTO_LIMIT = 10**9
"""Query x gallery scores above which search skips mAP unless asked (a full ranking per
query: 1,000 queries over 1M items is about a minute of one core)."""
MAP_MEMORY = 2 * 2**30
"""Bytes of float32 gallery vectors above which mAP is skipped unless asked: mAP ranks the
whole gallery, which it holds in memory."""


def search_metrics(
    gallery: Gallery, queries: np.ndarray, query_class: np.ndarray, hits: Hits, with_map=None
) -> dict:
    """recall@1 from the search's top-1 and mAP over the whole gallery, in percent, over the
    queries whose class the gallery holds (the others are counted as ``unanswerable``)."""
    answerable = query_class >= 0
    out: dict[str, Any] = {
        "queries": int(query_class.size),
        "unanswerable": int((~answerable).sum()),
    }
    if not answerable.any() or hits.positions.shape[1] == 0:
        return out
    top = np.array([hits.rows[int(p)]["label"] for p in hits.positions[:, 0]])
    out["recall@1"] = 100.0 * float((top == query_class)[answerable].mean())
    scores = int(answerable.sum()) * gallery.count
    memory = gallery.count * gallery.dim * 4
    if with_map is None and (scores > MAP_AUTO_LIMIT or memory > MAP_MEMORY):
        out["mAP_skipped"] = (
            f"{int(answerable.sum()):,} queries x {gallery.count:,} items need a full ranking "
            "of the gallery in memory; ask for it with --map"
        )
    elif with_map is not False:
        g = np.empty((gallery.count, gallery.dim), dtype=np.float32)
        gy = np.empty(gallery.count, dtype=np.int64)
        for rows in gallery.store.scan(("vector", "label")):
            g[rows.pos], gy[rows.pos] = rows.vectors, rows.labels
        out["mAP"] = mean_average_precision(
            torch.from_numpy(queries), query_class, torch.from_numpy(g), gy, backend="torch"
        )
    return out


def _params(nprobes: int | None = None, ef: int | None = None, refine: int | None = None) -> dict:
    """The approximate search's knobs (``None``: the engine's default), checked positive."""
    for name, v in (("--nprobes", nprobes), ("--ef", ef), ("--refine", refine)):
        if v is not None and v < 1:
            raise InputError(f"{name} {v}: must be a positive integer")
    return {"nprobes": nprobes, "ef": ef, "refine_factor": refine}


def search_index(
    index: str | os.PathLike,
    model: str | os.PathLike,
    query: str,
    k: int = 10,
    force: bool = False,
    split: str | None = None,
    batch_size: int = 256,
    device: str | None = "cpu",
    with_map: bool | None = None,
    approx: bool = False,
    params: Mapping | None = None,
    collection: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    """Embed the images of ``query`` with ``model`` and search the gallery; a JSON-able dict.

    Keys: ``search`` (exact or the index type), ``warnings`` (gate problems ``force``
    overrode), ``metrics`` (labelled queries), ``results`` (per query: ``id``, ``class`` and
    the ``k`` neighbours' ``id``, ``score``, ``class``, ``version``).
    """
    from .embed import load_embedder

    if k < 1:
        raise InputError(f"--top-k {k}: must be at least 1")
    emb = load_embedder(model)
    with Gallery.open(index, collection, timeout) as gallery:
        warnings = require_searchable(
            gallery, emb.fingerprint, emb.contract, emb.feat_dim, force, f"model {model}"
        )
        info = gallery.store.index_info()
        if approx and info is None:
            raise InputError(
                f"index {gallery.uri} has no approximate vector index: build one with "
                "`compatkit index optimize IDX --index-type TYPE`, or search exactly"
            )
        data, qids = load_for_model(emb, query, split)
        q = embed_all(emb, data, batch_size, device)
        hits = gallery.store.search(q, k, approx=approx, params=_params(**(params or {})))
        qnames = [data.classes[int(y)] for y in data.labels]
        metrics = search_metrics(gallery, q, class_lookup(gallery, qnames), hits, with_map)
    results = []
    for i in range(len(qids)):
        near = []
        for p, s in zip(hits.positions[i], hits.scores[i], strict=True):
            row = hits.rows[int(p)]
            near.append(
                {
                    "id": row["id"],
                    "score": float(s),
                    "class": row["class"],
                    "version": short(row["version"]),
                }
            )
        results.append({"id": qids[i], "class": qnames[i], "neighbours": near})
    return {
        "index": str(index),
        "model": {"path": str(model), "fingerprint": emb.fingerprint},
        "search": info["type"] if approx else "exact",
        "k": int(hits.positions.shape[1]),
        "warnings": warnings,
        "metrics": metrics,
        "results": results,
    }


def measure_recall(
    index: str | os.PathLike,
    model: str | os.PathLike,
    query: str,
    k: int = 10,
    params: Mapping | None = None,
    split: str | None = None,
    batch_size: int = 256,
    device: str | None = "cpu",
    collection: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    """recall@k of the approximate index against exact search for ``query``'s images
    embedded by ``model`` (mean over queries of |approximate top k ∩ exact top k| / k),
    with each search's time."""
    from .embed import load_embedder

    emb = load_embedder(model)
    with Gallery.open(index, collection, timeout) as g:
        require_dim(g, emb.feat_dim, f"--model {model}")
        info = g.store.index_info()
        if info is None:
            raise InputError(
                f"index {g.uri} has no approximate vector index to measure; build one with "
                "`compatkit index optimize IDX --index-type TYPE`"
            )
        data, _ = load_for_model(emb, query, split)
        q = embed_all(emb, data, batch_size, device)
        t0 = time.perf_counter()
        exact = g.store.search(q, k)
        t1 = time.perf_counter()
        approx = g.store.search(q, k, approx=True, params=_params(**(params or {})))
        t2 = time.perf_counter()
    kk = exact.positions.shape[1]
    hits = [
        len(set(a.tolist()) & set(b.tolist()))
        for a, b in zip(approx.positions, exact.positions, strict=True)
    ]
    return {
        "index_type": info["type"],
        "k": kk,
        "queries": int(q.shape[0]),
        "recall": float(np.mean(hits)) / max(kk, 1),
        "exact_s": t1 - t0,
        "approx_s": t2 - t1,
    }
