"""The compatibility matrix: query features of model i against gallery features of model j."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from .measures import ap_sum, class_templates, recall_hits, recall_hits_faiss, template_hits
from .neighbours import check_labels, flat_index, normalize_rows, percent, resolve_backend

__all__ = ["cross_model_matrix"]


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
    qs = [normalize_rows(f, f"query features of model {i}") for i, f in enumerate(query_feats)]
    device = qs[0].device
    gs = [
        normalize_rows(f, f"gallery features of model {i}").to(device)
        for i, f in enumerate(gallery_feats)
    ]
    qs = [q.to(device) for q in qs]
    qy = check_labels(query_labels, qs[0].shape[0], device, "query labels")
    gy = check_labels(gallery_labels, gs[0].shape[0], device, "gallery labels")
    for name, sets, labels in (("query", qs, qy), ("gallery", gs, gy)):
        for i, f in enumerate(sets):
            if f.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"model {i} has {f.shape[0]} {name} features but there are "
                    f"{labels.shape[0]} {name} labels"
                )
    templates = [class_templates(g, gy) for g in gs] if m == "template" else None
    widest = torch.float64 if any(f.dtype == torch.float64 for f in (*qs, *gs)) else torch.float32
    use_faiss = resolve_backend(backend, device, widest, bool(recall_k)) == "faiss"
    indexes: dict[int, object] = {}  # gallery model -> faiss index, built on first use

    def index_of(j: int):
        if not use_faiss:
            return None
        if j not in indexes:
            indexes[j] = flat_index(templates[j][0] if templates is not None else gs[j])
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
                res = template_hits(q, qy, tmpl.to(q.dtype), ids, chunk or 8192, index_of(j))
            elif recall_k:
                k = int(recall_k.group(1))
                if use_faiss:
                    hits, counted = recall_hits_faiss(q, qy, index_of(j), gy, (k,), chunk or 4096)
                else:
                    hits, counted = recall_hits(q, qy, g, gy, (k,), chunk or 4096)
                res = (hits[k], counted)
            else:
                res = ap_sum(q, qy, g, gy, chunk or 1024, index_of(j))
            out[i, j] = percent(*res, f"{metric} of model {i} vs model {j}")
    return out
