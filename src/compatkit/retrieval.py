"""Retrieval metrics by cosine similarity and the cross-model compatibility matrix.

The evaluation of Biondi et al., "Stationary Representations: Optimally
Approximating Compatibility and Implications for Improved Model Replacements",
CVPR 2024 (METHOD.md Sec. 4): the gallery is reduced to one template per class
(the mean of L2-normalised features, re-normalised) and each query is
assigned the class of its nearest template by cosine ("1:N search accuracy").
Recall@K and mAP over the full gallery are the usual alternatives in the
compatible-learning literature (BCT, Shen et al., CVPR 2020) and are offered
for the same matrix.

Everything is batched matrix algebra on whatever device the features live on
(no per-query Python loop), chunked over queries so that a 50,000 x 10,000
score matrix is never held at once. Features of any floating dtype are
accepted; float16/bfloat16 are upcast to float32 and float64 stays float64.

Conventions shared by all metrics here:

- Results are percentages (0-100) as Python floats.
- Queries whose class does not occur in the gallery are left out of the
  average: no model can answer them, so counting them would only scale every
  entry of a compatibility matrix by the same factor. If no query is left, the
  metric raises ``ValueError``.
- Ties in similarity are broken deterministically: among equal scores the
  gallery item (or template) with the lower index (or lower class id) ranks
  first, as a stable sort of the gallery by descending score would order them.

Search backends (``backend=``): ``"torch"`` is the chunked matrix algebra
above, on any device. ``"faiss"`` searches an exact ``faiss.IndexFlatIP`` of
the L2-normalised gallery (or templates) on the CPU, in float32; it is an
optional extra (``pip install 'compatkit[faiss]'``). ``"auto"`` (the default)
takes faiss for recall@K when faiss imports and the features are float32 (or
narrower) on the CPU, where a k-nearest search avoids scoring and masking the
full query x gallery matrix; torch everywhere else (a handful of class
templates, the full ranking that mAP needs, float64 features, or features
already on a GPU). Both backends return the same numbers: faiss keeps, among
equal scores, the lower gallery index when it cuts its top-k list, and the
neighbours it returns are re-sorted by (score descending, index ascending),
which is the stable order above. The one difference is precision: faiss
scores in float32, so float64 features whose scores differ by less than
float32 rounding (~1e-7) may rank differently (``auto`` keeps float64
features on torch for that reason); on real features such near-ties are
vanishingly rare.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BACKENDS",
    "class_templates",
    "cross_model_matrix",
    "faiss_available",
    "mean_average_precision",
    "recall_at_k",
    "stable_topk",
    "template_accuracy",
]


# ----------------------------------------------------------------------------- helpers


def _normalize(x: torch.Tensor, name: str = "features") -> torch.Tensor:
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


def _labels(y, n: int, device: torch.device, name: str) -> torch.Tensor:
    y = torch.as_tensor(y, device=device)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D tensor of {n} labels, got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got {y.dtype}")
    return y.long()


def _pair(qf, ql, gf, gl) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise and validate a query/gallery pair; the gallery moves to the query's device."""
    q = _normalize(qf, "query features")
    g = _normalize(gf, "gallery features").to(device=q.device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query features have dimension {q.shape[1]} but gallery features {g.shape[1]}"
        )
    if g.dtype != q.dtype:  # compare in the wider of the two dtypes
        dt = torch.promote_types(q.dtype, g.dtype)
        q, g = q.to(dt), g.to(dt)
    qy = _labels(ql, q.shape[0], q.device, "query labels")
    gy = _labels(gl, g.shape[0], q.device, "gallery labels")
    return q, qy, g, gy


def _percent(hits: float, counted: int, what: str) -> float:
    if counted == 0:
        raise ValueError(f"{what}: no query has a class present in the gallery")
    return 100.0 * float(hits) / counted


# ----------------------------------------------------------------------------- backends

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


def _backend(backend: str, device: torch.device, dtype: torch.dtype, prefer_faiss: bool) -> str:
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


class _FlatIndex(NamedTuple):
    """A faiss exact inner-product index and the float32 CPU rows it holds."""

    index: Any
    vectors: torch.Tensor


def _flat_index(vectors: torch.Tensor) -> _FlatIndex:
    """An exact inner-product index of unit rows (float32, on the CPU)."""
    faiss = _faiss()
    x = vectors.detach().to("cpu", torch.float32).contiguous()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x.numpy())
    return _FlatIndex(index, x)


_TIE_SLACK = 16
"""Extra neighbours asked of faiss beyond k, so that most ties at the k-th place are settled
from faiss's own list; longer tie groups fall back to an exact ranking of that query."""


def _faiss_neighbours(flat: _FlatIndex, q: torch.Tensor, k: int) -> torch.Tensor:
    """``(nq, k)`` gallery indices of each query's k best, in stable order, on ``q``'s device.

    Stable order is (score descending, index ascending), the torch backend's rule. faiss
    neither keeps the lower indices when it cuts a group of equal scores nor orders equal
    scores by index, so: ask for ``k + _TIE_SLACK`` neighbours and re-sort them; a query
    whose group of scores equal to its k-th best may run past the end of that list is
    ranked exactly by a stable sort of its scores against every row (exact ties are rare
    with real features, so this costs nothing in practice).
    """
    n = flat.index.ntotal
    kk = min(n, k + _TIE_SLACK)
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
    """``(rows, k)`` column indices of each row's k best scores in stable order (score
    descending, index ascending): among scores equal at the cut, the lower indices.

    ``torch.topk`` cuts such a group arbitrarily and orders equal scores arbitrarily; rows
    where more than k scores reach the k-th best are redone with a stable sort (exact ties
    are rare with real features, so the fast path stays fast).
    """
    vals, idx = torch.topk(scores, k, dim=1)
    ambiguous = (scores >= vals[:, -1:]).sum(dim=1) > k
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        idx[rows] = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :k]
    idx = torch.sort(idx, dim=1).values  # then a stable sort by score: equal scores by index
    order = torch.sort(torch.gather(scores, 1, idx), dim=1, descending=True, stable=True)
    return torch.gather(idx, 1, order.indices)


# ----------------------------------------------------------------------------- templates


def class_templates(features: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """One unit template per class: the mean of the class's L2-normalised features, re-normalised.

    Returns ``(templates, class_ids)``: ``templates`` is ``(C, d)`` on the
    features' device, row ``c`` belonging to ``class_ids[c]``; ``class_ids``
    are the distinct labels in increasing order.
    """
    f = _normalize(features, "gallery features")
    y = _labels(labels, f.shape[0], f.device, "gallery labels")
    class_ids, inverse = torch.unique(y, sorted=True, return_inverse=True)
    sums = torch.zeros(class_ids.numel(), f.shape[1], dtype=f.dtype, device=f.device)
    sums.index_add_(0, inverse, f)
    counts = torch.bincount(inverse, minlength=class_ids.numel()).to(f.dtype)
    return F.normalize(sums / counts[:, None], dim=1), class_ids


def _template_hits(
    q: torch.Tensor,
    qy: torch.Tensor,
    templates: torch.Tensor,
    ids: torch.Tensor,
    chunk: int,
    index=None,
) -> tuple[int, int]:
    """Queries whose nearest template is their class's; ``index``: a faiss index of templates."""
    valid = torch.isin(qy, ids)
    hits = 0
    for s in range(0, q.shape[0], chunk):
        if index is not None:
            best = _faiss_neighbours(index, q[s : s + chunk], 1)[:, 0]
        else:
            # argmax returns the first maximum: ties go to the lowest class id.
            best = (q[s : s + chunk] @ templates.t()).argmax(dim=1)
        hits += int((ids[best] == qy[s : s + chunk]).sum())
    return hits, int(valid.sum())


def template_accuracy(
    query_feats: torch.Tensor,
    query_labels,
    gallery_feats: torch.Tensor,
    gallery_labels,
    chunk: int = 8192,
    backend: str = "auto",
) -> float:
    """Top-1 accuracy (%) of the nearest class template by cosine: the paper's 1:N search.

    ``backend``: see the module notes; ``auto`` is torch here (a few templates per query).
    """
    q, qy, g, gy = _pair(query_feats, query_labels, gallery_feats, gallery_labels)
    templates, ids = class_templates(g, gy)
    index = (
        _flat_index(templates) if _backend(backend, q.device, q.dtype, False) == "faiss" else None
    )
    return _percent(*_template_hits(q, qy, templates, ids, chunk, index), "template accuracy")


# ----------------------------------------------------------------------------- full gallery


def _recall_hits(
    q: torch.Tensor,
    qy: torch.Tensor,
    g: torch.Tensor,
    gy: torch.Tensor,
    ks: Sequence[int],
    chunk: int,
) -> tuple[dict[int, int], int]:
    """Per k, how many queries have a same-class item in their top k (stable tie order).

    Without sorting: the first positive in a stable descending ordering is
    the positive with the highest score, the lowest-indexed among equals; its
    rank is the number of items scoring strictly higher plus the number of
    items tying with it at a lower index.
    """
    n = g.shape[0]
    idx = torch.arange(n, device=q.device)
    hits = dict.fromkeys(ks, 0)
    counted = 0
    for s in range(0, q.shape[0], chunk):
        scores = q[s : s + chunk] @ g.t()
        pos = gy[None, :] == qy[s : s + chunk, None]
        has_pos = pos.any(dim=1)
        best = scores.masked_fill(~pos, float("-inf")).amax(dim=1, keepdim=True)
        tie = scores == best
        first = (tie & pos).to(torch.uint8).argmax(dim=1, keepdim=True)  # first True
        rank = (scores > best).sum(dim=1) + (tie & (idx[None, :] < first)).sum(dim=1)
        counted += int(has_pos.sum())
        for k in ks:
            hits[k] += int((has_pos & (rank < k)).sum())
    return hits, counted


def _recall_hits_faiss(
    q: torch.Tensor, qy: torch.Tensor, index, gy: torch.Tensor, ks: Sequence[int], chunk: int
) -> tuple[dict[int, int], int]:
    """As :func:`_recall_hits`, from each query's max(ks) nearest gallery items found by faiss."""
    kmax = min(max(ks), gy.shape[0])  # faiss pads lists longer than the gallery with -1
    hits = dict.fromkeys(ks, 0)
    for s in range(0, q.shape[0], chunk):
        near = _faiss_neighbours(index, q[s : s + chunk], kmax)
        rel = gy[near] == qy[s : s + chunk, None]  # (chunk, kmax), stable order
        for k in ks:
            hits[k] += int(rel[:, :k].any(dim=1).sum())
    return hits, int(torch.isin(qy, gy).sum())


def recall_at_k(
    query_feats: torch.Tensor,
    query_labels,
    gallery_feats: torch.Tensor,
    gallery_labels,
    ks: Sequence[int] = (1, 5),
    chunk: int = 4096,
    backend: str = "auto",
) -> dict[int, float]:
    """Recall@K (%) over the full gallery by cosine: a query counts when any of its K nearest
    gallery items has its class.

    ``backend``: ``torch``, ``faiss`` (an exact ``IndexFlatIP`` search on the CPU) or ``auto``
    (faiss when it imports and the features are on the CPU); same results, see the module notes.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    q, qy, g, gy = _pair(query_feats, query_labels, gallery_feats, gallery_labels)
    if _backend(backend, q.device, q.dtype, True) == "faiss":
        hits, counted = _recall_hits_faiss(q, qy, _flat_index(g), gy, ks, chunk)
    else:
        hits, counted = _recall_hits(q, qy, g, gy, ks, chunk)
    return {k: _percent(hits[k], counted, f"recall@{k}") for k in ks}


def _ap_sum(
    q: torch.Tensor,
    qy: torch.Tensor,
    g: torch.Tensor,
    gy: torch.Tensor,
    chunk: int,
    index=None,
) -> tuple[float, int]:
    """Sum of the APs of the queries that have a positive, and their count.

    ``index``: a faiss index of ``g``, asked for the full ranking (mAP needs every rank).
    """
    n = g.shape[0]
    inv_rank = 1.0 / torch.arange(1, n + 1, device=q.device, dtype=q.dtype)
    total, counted = 0.0, 0
    for s in range(0, q.shape[0], chunk):
        if index is not None:
            order = _faiss_neighbours(index, q[s : s + chunk], n)
        else:
            scores = q[s : s + chunk] @ g.t()
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        rel = (gy[order] == qy[s : s + chunk, None]).to(q.dtype)
        n_pos = rel.sum(dim=1)
        precision = rel.cumsum(dim=1) * inv_rank  # precision at every rank
        ap = (precision * rel).sum(dim=1) / n_pos.clamp(min=1)
        keep = n_pos > 0
        total += float(ap[keep].sum())
        counted += int(keep.sum())
    return total, counted


def mean_average_precision(
    query_feats: torch.Tensor,
    query_labels,
    gallery_feats: torch.Tensor,
    gallery_labels,
    chunk: int = 1024,
    backend: str = "auto",
) -> float:
    """mAP (%) over the full gallery ranked by cosine.

    AP of one query = (1/R) * sum over the ranks k of its R same-class gallery
    items of precision@k; the gallery is ranked by a stable sort on descending
    score, so equal scores keep gallery order. ``backend``: ``auto`` is torch
    here (the full ranking is one matrix product and a sort; a k-nearest search
    gains nothing); ``faiss`` asks the index for the whole ranking.
    """
    q, qy, g, gy = _pair(query_feats, query_labels, gallery_feats, gallery_labels)
    index = _flat_index(g) if _backend(backend, q.device, q.dtype, False) == "faiss" else None
    return _percent(*_ap_sum(q, qy, g, gy, chunk, index), "mAP")


# ----------------------------------------------------------------------------- the matrix

_RECALL = re.compile(r"^recall@(\d+)$")


def cross_model_matrix(
    query_feats: Sequence[torch.Tensor],
    gallery_feats: Sequence[torch.Tensor],
    query_labels,
    gallery_labels,
    metric: str = "template",
    chunk: int | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """The compatibility matrix ``C[i][j] = M(query by model i, gallery by model j)``, j <= i.

    ``query_feats[i]`` / ``gallery_feats[i]`` are model i's features of the
    same query and gallery images (so the labels are shared). ``metric`` is
    ``"template"`` (the paper's), ``"recall@K"`` for any K, or ``"mAP"``.
    Gallery normalisation and templates are computed once per model, then
    each of the T(T+1)/2 entries is one chunked matrix product. Returns a
    float64 ``(T, T)`` array in percent with NaN above the diagonal (the
    input of :mod:`compatkit.metrics`). ``backend`` as for the single metrics
    (``auto``: faiss for recall@K on CPU features when faiss imports, else
    torch); with faiss, one index per gallery model is built and reused by
    every query model.
    """
    t = len(query_feats)
    if t == 0 or len(gallery_feats) != t:
        raise ValueError(
            f"need the same number (>= 1) of query and gallery feature sets, got "
            f"{len(query_feats)} and {len(gallery_feats)}"
        )
    m = metric.strip().lower()
    recall_k = _RECALL.match(m)
    if m not in ("template", "map") and not recall_k:
        raise ValueError(f"unknown metric {metric!r}; use 'template', 'recall@K' or 'mAP'")

    if recall_k and int(recall_k.group(1)) < 1:
        raise ValueError(f"recall@K needs K >= 1, got {metric!r}")

    # Normalise each set once; everything moves to the first query set's device.
    qs = [_normalize(f, f"query features of model {i}") for i, f in enumerate(query_feats)]
    device = qs[0].device
    gs = [
        _normalize(f, f"gallery features of model {i}").to(device)
        for i, f in enumerate(gallery_feats)
    ]
    qs = [q.to(device) for q in qs]
    qy = _labels(query_labels, qs[0].shape[0], device, "query labels")
    gy = _labels(gallery_labels, gs[0].shape[0], device, "gallery labels")
    for name, sets, labels in (("query", qs, qy), ("gallery", gs, gy)):
        for i, f in enumerate(sets):
            if f.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"model {i} has {f.shape[0]} {name} features but there are "
                    f"{labels.shape[0]} {name} labels"
                )
    templates = [class_templates(g, gy) for g in gs] if m == "template" else None
    widest = torch.float64 if any(f.dtype == torch.float64 for f in (*qs, *gs)) else torch.float32
    use_faiss = _backend(backend, device, widest, bool(recall_k)) == "faiss"
    indexes: dict[int, object] = {}  # gallery model -> faiss index, built on first use

    def index_of(j: int):
        if not use_faiss:
            return None
        if j not in indexes:
            indexes[j] = _flat_index(templates[j][0] if templates is not None else gs[j])
        return indexes[j]

    out = np.full((t, t), np.nan, dtype=np.float64)
    for i in range(t):
        for j in range(i + 1):
            q, g = qs[i], gs[j]
            if q.shape[1] != g.shape[1]:
                raise ValueError(
                    f"cannot compare model {i} (query, feature dimension {q.shape[1]}) with "
                    f"model {j} (gallery, feature dimension {g.shape[1]})"
                )
            if q.dtype != g.dtype:
                dt = torch.promote_types(q.dtype, g.dtype)
                q, g = q.to(dt), g.to(dt)
            if templates is not None:
                tmpl, ids = templates[j]
                res = _template_hits(q, qy, tmpl.to(q.dtype), ids, chunk or 8192, index_of(j))
            elif recall_k:
                k = int(recall_k.group(1))
                if use_faiss:
                    hits, counted = _recall_hits_faiss(q, qy, index_of(j), gy, (k,), chunk or 4096)
                else:
                    hits, counted = _recall_hits(q, qy, g, gy, (k,), chunk or 4096)
                res = (hits[k], counted)
            else:
                res = _ap_sum(q, qy, g, gy, chunk or 1024, index_of(j))
            out[i, j] = _percent(*res, f"{metric} of model {i} vs model {j}")
    return out
