"""Retrieval metrics by cosine: the paper's template accuracy, recall@K and mAP.

The evaluation of Biondi et al., CVPR 2024: the gallery is reduced to one template per class
(the mean of L2-normalised features, re-normalised) and each query is assigned the class of
its nearest template by cosine ("1:N search accuracy"). Recall@K and mAP over the full gallery
are the usual alternatives in the compatible-learning literature (BCT, Shen et al., CVPR 2020).

Results are percentages (0-100). Queries whose class does not occur in the gallery are left
out of the average: no model can answer them, so counting them would only scale every entry
of a compatibility matrix by the same factor; if no query is left, the metric raises
``ValueError``. Rankings follow the tie rule and backends of
:mod:`compatkit.retrieval.neighbours`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .neighbours import (
    check_labels,
    check_pair,
    faiss_neighbours,
    flat_index,
    normalize_rows,
    percent,
    resolve_backend,
)

__all__ = [
    "ap_sum",
    "class_templates",
    "mean_average_precision",
    "recall_at_k",
    "recall_hits",
    "recall_hits_faiss",
    "template_accuracy",
    "template_hits",
]


def class_templates(features: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """One unit template per class: the mean of the class's L2-normalised features, re-normalised.

    Returns ``(templates, class_ids)``: ``templates`` is ``(C, d)`` on the
    features' device, row ``c`` belonging to ``class_ids[c]``; ``class_ids``
    are the distinct labels in increasing order.
    """
    f = normalize_rows(features, "gallery features")
    y = check_labels(labels, f.shape[0], f.device, "gallery labels")
    class_ids, inverse = torch.unique(y, sorted=True, return_inverse=True)
    sums = torch.zeros(class_ids.numel(), f.shape[1], dtype=f.dtype, device=f.device)
    sums.index_add_(0, inverse, f)
    counts = torch.bincount(inverse, minlength=class_ids.numel()).to(f.dtype)
    return F.normalize(sums / counts[:, None], dim=1), class_ids


def template_hits(
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
            best = faiss_neighbours(index, q[s : s + chunk], 1)[:, 0]
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
    q, qy, g, gy = check_pair(query_feats, query_labels, gallery_feats, gallery_labels)
    templates, ids = class_templates(g, gy)
    index = (
        flat_index(templates)
        if resolve_backend(backend, q.device, q.dtype, False) == "faiss"
        else None
    )
    return percent(*template_hits(q, qy, templates, ids, chunk, index), "template accuracy")


def recall_hits(
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


def recall_hits_faiss(
    q: torch.Tensor, qy: torch.Tensor, index, gy: torch.Tensor, ks: Sequence[int], chunk: int
) -> tuple[dict[int, int], int]:
    """As :func:`_recall_hits`, from each query's max(ks) nearest gallery items found by faiss."""
    kmax = min(max(ks), gy.shape[0])  # faiss pads lists longer than the gallery with -1
    hits = dict.fromkeys(ks, 0)
    for s in range(0, q.shape[0], chunk):
        near = faiss_neighbours(index, q[s : s + chunk], kmax)
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
    q, qy, g, gy = check_pair(query_feats, query_labels, gallery_feats, gallery_labels)
    if resolve_backend(backend, q.device, q.dtype, True) == "faiss":
        hits, counted = recall_hits_faiss(q, qy, flat_index(g), gy, ks, chunk)
    else:
        hits, counted = recall_hits(q, qy, g, gy, ks, chunk)
    return {k: percent(hits[k], counted, f"recall@{k}") for k in ks}


def ap_sum(
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
            order = faiss_neighbours(index, q[s : s + chunk], n)
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
    q, qy, g, gy = check_pair(query_feats, query_labels, gallery_feats, gallery_labels)
    index = flat_index(g) if resolve_backend(backend, q.device, q.dtype, False) == "faiss" else None
    return percent(*ap_sum(q, qy, g, gy, chunk, index), "mAP")
