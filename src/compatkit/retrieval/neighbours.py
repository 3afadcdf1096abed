"""Nearest neighbours by cosine, with one tie rule and two backends.

Every ranking in compatkit orders gallery items by descending cosine similarity and, among
equal scores, puts the lower gallery index (or lower class id) first, as a stable sort of the
gallery by descending score would. Features of any floating dtype are accepted; float16 and
bfloat16 are upcast to float32, float64 stays float64. Work is chunked over queries, so a
50,000 x 10,000 score matrix is never held at once.

Backends (``backend=``): ``"torch"`` is chunked matrix algebra on any device. ``"faiss"``
searches an exact ``faiss.IndexFlatIP`` of the L2-normalised rows on the CPU, in float32 (an
optional extra: ``pip install 'compatkit[faiss]'``); it keeps the tie rule by asking for a few
more neighbours than needed and re-sorting them, and by an exact ranking of the rare query
whose tie group runs past that list. ``"auto"`` takes faiss only where a k-nearest search
pays (recall@K) on float32 CPU features, torch everywhere else. Both give the same numbers,
except that faiss scores in float32: float64 features whose scores differ by less than float32
rounding (~1e-7) may rank differently (``auto`` keeps float64 features on torch).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BACKENDS",
    "TIE_SLACK",
    "FlatIndex",
    "check_labels",
    "check_pair",
    "faiss_available",
    "faiss_neighbours",
    "flat_index",
    "normalize_rows",
    "percent",
    "resolve_backend",
    "stable_topk",
    "top_k",
]


def normalize_rows(x: torch.Tensor, name: str = "features") -> torch.Tensor:
    """L2-normalise rows in a floating dtype of at least float32 precision."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, d) tensor, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if x.dtype != torch.float64:
        x = x.float()
    return F.normalize(x, dim=1)


def check_labels(y, n: int, device: torch.device, name: str) -> torch.Tensor:
    y = torch.as_tensor(y, device=device)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D tensor of {n} labels, got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got {y.dtype}")
    return y.long()


def check_pair(qf, ql, gf, gl) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise and validate a query/gallery pair; the gallery moves to the query's device."""
    q = normalize_rows(qf, "query features")
    g = normalize_rows(gf, "gallery features").to(device=q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query features have dimension {q.shape[1]} but gallery features {g.shape[1]}"
        )
    if g.dtype != q.dtype:  # compare in the wider of the two dtypes
        dt = torch.promote_types(q.dtype, g.dtype)
        q, g = q.to(dt), g.to(dt)
    qy = check_labels(ql, q.shape[0], q.device, "query labels")
    gy = check_labels(gl, g.shape[0], q.device, "gallery labels")
    return q, qy, g, gy


def percent(hits: float, counted: int, what: str) -> float:
    if counted == 0:
        raise ValueError(f"{what}: no query has a class present in the gallery")
    return 100.0 * float(hits) / counted


BACKENDS = ("auto", "torch", "faiss")
"""Accepted values of every ``backend=`` argument of this module."""


@functools.lru_cache(maxsize=1)
def _faiss() -> ModuleType | None:
    """The faiss module, or None when the optional extra is not installed (imported once)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_available() -> bool:
    """Whether ``backend="faiss"`` can be used (the ``compatkit[faiss]`` extra imports)."""
    return _faiss() is not None


def resolve_backend(
    backend: str, device: torch.device, dtype: torch.dtype, prefer_faiss: bool
) -> str:
    """Resolve ``backend`` to ``"torch"`` or ``"faiss"`` for features of ``device``/``dtype``.

    ``prefer_faiss``: whether the metric gains from a k-nearest search (recall@K); ``auto``
    takes faiss only then, only for CPU features (moving GPU features to the CPU to search
    them there would cost more than the GPU's own matrix product) and only for float32 ones
    (faiss would round float64 features to float32 and could reorder their near-ties).
    """
    b = str(backend).strip().lower()
    if b not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")
    if b == "auto":
        ok = device.type == "cpu" and dtype == torch.float32 and faiss_available()
        return "faiss" if prefer_faiss and ok else "torch"
    if b == "faiss" and not faiss_available():
        raise ImportError("backend='faiss' needs faiss: pip install 'compatkit[faiss]'")
    return b


class FlatIndex(NamedTuple):
    """A faiss exact inner-product index and the float32 CPU rows it holds."""

    index: Any
    vectors: torch.Tensor


def flat_index(vectors: torch.Tensor) -> FlatIndex:
    """An exact inner-product index of unit rows (float32, on the CPU)."""
    faiss = _faiss()
    x = vectors.detach().to("cpu", torch.float32).contiguous()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x.numpy())
    return FlatIndex(index, x)


TIE_SLACK = 16
"""Extra neighbours asked of faiss beyond k, so that most ties at the k-th place are settled
from faiss's own list; longer tie groups fall back to an exact ranking of that query."""


def faiss_neighbours(flat: FlatIndex, q: torch.Tensor, k: int) -> torch.Tensor:
    """``(nq, k)`` gallery indices of each query's k best, in stable order, on ``q``'s device.

    Stable order is (score descending, index ascending), the torch backend's rule. faiss
    neither keeps the lower indices when it cuts a group of equal scores nor orders equal
    scores by index, so: ask for ``k + TIE_SLACK`` neighbours and re-sort them; a query
    whose group of scores equal to its k-th best may run past the end of that list is
    ranked exactly by a stable sort of its scores against every row (exact ties are rare
    with real features, so this costs nothing in practice).
    """
    n = flat.index.ntotal
    kk = min(n, k + TIE_SLACK)
    x = q.detach().to("cpu", torch.float32).contiguous()
    scores, ids = flat.index.search(x.numpy(), kk)
    order = np.lexsort((ids, -scores), axis=1)  # last key first: score desc, then index asc
    ids = np.take_along_axis(ids, order, axis=1)[:, :k]
    if kk < n:
        scores = np.take_along_axis(scores, order, axis=1)
        cut = np.nonzero(scores[:, -1] >= scores[:, k - 1])[0]
        if len(cut):
            exact = x[torch.from_numpy(cut)] @ flat.vectors.t()
            best = torch.sort(exact, dim=1, descending=True, stable=True).indices[:, :k]
            ids[cut] = best.numpy()
    return torch.from_numpy(ids).to(q.device)


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``(rows, k)`` column indices of each row's k best scores, in the one order (score
    descending, index ascending): among scores equal at the cut, the lower indices."""
    n = scores.shape[1]
    if k <= 0 or n == 0:
        return torch.zeros((scores.shape[0], 0), dtype=torch.long, device=scores.device)
    # torch.topk picks arbitrarily among values tied at the cut: rows with such a tie are
    # ranked by a full stable sort (rare with real features, so the fast path stays fast).
    # More than k scores reach the k-th best exactly when the (k+1)-th best equals it, so one
    # topk of k + 1 finds those rows without a second pass over the scores.
    vals, idx = torch.topk(scores, min(k + 1, n), dim=1)
    if k < n:
        ambiguous = vals[:, k] == vals[:, k - 1]
        vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    else:
        ambiguous = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        idx[rows] = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :k]
        vals[rows] = torch.gather(scores[rows], 1, idx[rows])
    # within the k kept: lower index first among equal scores
    by_index = torch.sort(idx, dim=1).indices
    idx, vals = torch.gather(idx, 1, by_index), torch.gather(vals, 1, by_index)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return torch.gather(idx, 1, order)


def top_k(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    backend: str = "auto",
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` most similar gallery rows by cosine, in the one tie order.

    Returns ``(scores, indices)``, both ``(nq, min(k, n))``, on the queries' device: the
    cosine similarities (in the features' dtype, recomputed from the rows whichever backend
    searched) and the gallery row indices.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = normalize_rows(queries, "query features")
    g = normalize_rows(gallery, "gallery features").to(q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query features have dimension {q.shape[1]} but gallery features {g.shape[1]}"
        )
    dt = torch.promote_types(q.dtype, g.dtype)
    q, g = q.to(dt), g.to(dt)
    k = min(k, g.shape[0])
    index = flat_index(g) if resolve_backend(backend, q.device, dt, True) == "faiss" else None
    out = []
    for s in range(0, q.shape[0], chunk):
        qc = q[s : s + chunk]
        if index is not None:
            out.append(faiss_neighbours(index, qc, k))
        else:
            out.append(stable_topk(qc @ g.t(), k))
    idx = torch.cat(out)
    scores = (q[:, None, :] * g[idx]).sum(dim=2)
    return scores, idx
