"""Exact top-k cosine search over a versioned gallery, shard by shard, with FAISS or torch.

The gallery can be larger than memory (1M x 1023 float16 is 2 GB; as the float32
matrix an ``IndexFlatIP`` holds it would be 4 GiB), so it is never loaded whole:
each shard block is mapped, copied to float32 (256 MiB for 65,536 rows at
d = 1023), scored against a chunk of queries, and reduced to each query's best
``k + margin`` candidates, which are merged with the best so far. Peak memory is
one block, one score matrix and the candidate lists, whatever the gallery size.

Both backends (``torch``: one matrix product and ``topk``; ``faiss``:
``faiss.knn``, the same exact inner-product search without building an index)
only *propose* candidates. Every candidate is then rescored in float64 from the
stored values (float16 x float32 products are exact in float64), and the final
order is (score descending, item position ascending): the stable gallery order
of :mod:`compatkit.retrieval`. So both backends return identical ids and
identical scores, whatever rounding their float32 kernels make, as long as the
true top k lies within the ``k + margin`` best float32 scores of each block;
with margin 16 that needs more than 16 items within float32 rounding (~1e-7) of
the k-th score in one block, which real features do not produce. Within a block,
equal float32 scores are cut keeping the lower row: torch's ``topk`` is made to,
and a query whose faiss list ends inside a group of scores equal to its k-th
(faiss cuts such groups arbitrarily) is selected again by torch's rule; rows
are stored in increasing item order, so even exact duplicates resolve to the
lowest item position.

Vectors are compared as stored: the caller passes L2-normalised query vectors,
and gallery vectors were normalised before they were stored (float16 rounding
moves a unit vector's norm by at most ~1e-3; normalising again on every search
would cost a pass over the gallery for nothing the ranking can see).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..retrieval import faiss_available
from .index_store import BLOCK_ROWS, Gallery

__all__ = ["SearchResult", "ranking_scores", "resolve_backend", "search"]

MARGIN = 16
"""Extra candidates per block beyond k (see the module notes)."""

QUERY_CHUNK = 1024
"""Queries scored at once: a 1024 x 65536 float32 score block is 256 MiB."""

RESCORE_CHUNK = 128
"""Queries rescored at once: 128 x 26 candidates x 1023 doubles is 27 MiB."""


@dataclass
class SearchResult:
    """Each query's k nearest gallery items, best first."""

    positions: np.ndarray
    """``(nq, k)`` int64 item positions (index into the gallery's ids)."""
    scores: np.ndarray
    """``(nq, k)`` float64 cosine similarities."""
    backend: str


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``faiss`` when it imports, else ``torch``; an explicit name is checked."""
    b = str(backend).strip().lower()
    if b not in ("auto", "torch", "faiss"):
        raise InputError(f"--backend {backend!r}: use auto, torch or faiss")
    if b == "auto":
        return "faiss" if faiss_available() else "torch"
    if b == "faiss" and not faiss_available():
        raise InputError("--backend faiss: faiss is not installed (pip install 'compatkit[faiss]')")
    return b


def _topk_rows_torch(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Row indices of each query's k best scores; among equal scores the lower row.

    ``torch.topk`` picks arbitrarily among values tied at the cut; rows where such a
    tie exists are re-done with a stable sort (rare, so the fast path stays fast).
    """
    vals, idx = torch.topk(scores, k, dim=1)
    cut = vals[:, -1:]
    ambiguous = (scores >= cut).sum(dim=1) > k
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        idx[rows] = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :k]
    return idx


def _candidates(q: np.ndarray, g: np.ndarray, k: int, kk: int, backend: str) -> np.ndarray:
    """``(nq, kk)`` rows of ``g`` holding each query's kk best float32 inner products.

    Among equal scores at the cut, the lower rows, for every score group that reaches the
    k-th place (what the final top k can see).
    """
    if backend == "faiss":
        import faiss

        dist, idx = faiss.knn(q, g, kk, metric=faiss.METRIC_INNER_PRODUCT)
        idx = idx.astype(np.int64, copy=False)
        # faiss returns each list sorted by score; a group equal to the k-th score that runs
        # to the end of the list may have been cut anywhere: redo those queries.
        redo = np.flatnonzero(dist[:, kk - 1] >= dist[:, k - 1]) if kk < g.shape[0] else []
        if len(redo):
            scores = torch.from_numpy(q[redo]) @ torch.from_numpy(g).t()
            idx[redo] = _topk_rows_torch(scores, kk).numpy()
        return idx
    scores = torch.from_numpy(q) @ torch.from_numpy(g).t()
    return _topk_rows_torch(scores, kk).numpy()


def _merge(
    best_s: np.ndarray, best_p: np.ndarray, s: np.ndarray, p: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` best of two candidate lists, by (score desc, position asc)."""
    cs, cp = np.concatenate([best_s, s], axis=1), np.concatenate([best_p, p], axis=1)
    order = np.lexsort((cp, -cs), axis=1)[:, :keep]
    return np.take_along_axis(cs, order, axis=1), np.take_along_axis(cp, order, axis=1)


def _live_blocks(gallery: Gallery, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each block's live vectors as a float32 array and their item positions."""
    for b in gallery.blocks(rows):
        if b.live.all():
            vec, pos = b.vectors, b.items
        else:
            vec, pos = b.vectors[b.live], b.items[b.live]
        if pos.size:
            yield np.ascontiguousarray(vec, dtype=np.float32), pos


def search(
    gallery: Gallery,
    queries: np.ndarray | torch.Tensor,
    k: int = 10,
    backend: str = "auto",
    block_rows: int = BLOCK_ROWS,
    query_chunk: int = QUERY_CHUNK,
    margin: int = MARGIN,
) -> SearchResult:
    """The ``k`` nearest items of each query by cosine (queries: ``(nq, dim)``, unit rows).

    The gallery is streamed once; all queries are scored against each block in chunks of
    ``query_chunk``. Returns at most ``gallery.count`` neighbours per query.
    """
    q = queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else queries
    q = np.ascontiguousarray(q, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != gallery.dim:
        raise ValueError(f"queries must be (n, {gallery.dim}), got {q.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    be = resolve_backend(backend)
    nq, k = q.shape[0], min(int(k), gallery.count)
    keep = k + margin
    best_s = np.full((nq, 0), -np.inf)
    best_p = np.zeros((nq, 0), dtype=np.int64)
    q64 = q.astype(np.float64)
    for g, pos in _live_blocks(gallery, block_rows):
        kk = min(keep, pos.size)
        s_blk = np.empty((nq, kk))
        p_blk = np.empty((nq, kk), dtype=np.int64)
        for a in range(0, nq, query_chunk):
            rows = _candidates(q[a : a + query_chunk], g, min(k, kk), kk, be)
            p_blk[a : a + query_chunk] = pos[rows]
            # Exact rescoring: stored values times float32 queries, in float64 (a few
            # queries at a time: the gathered candidates are chunk x kk x dim doubles).
            for b in range(0, rows.shape[0], RESCORE_CHUNK):
                cand = g[rows[b : b + RESCORE_CHUNK]].astype(np.float64)
                n = cand.shape[0]
                s_blk[a + b : a + b + n] = np.einsum("qkd,qd->qk", cand, q64[a + b : a + b + n])
        best_s, best_p = _merge(best_s, best_p, s_blk, p_blk, keep)
    return SearchResult(best_p[:, :k], best_s[:, :k], be)


def ranking_scores(
    gallery: Gallery, queries: np.ndarray, block_rows: int = BLOCK_ROWS
) -> torch.Tensor:
    """``(nq, N)`` float32 scores of the queries against every item's current vector, in
    item order (what a full ranking, e.g. mAP, needs). Memory: nq x N x 4 bytes; the caller
    chunks the queries."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    out = torch.empty(q.shape[0], gallery.count, dtype=torch.float32)
    for g, pos in _live_blocks(gallery, block_rows):
        out[:, torch.from_numpy(pos)] = q @ torch.from_numpy(g).t()
    return out
