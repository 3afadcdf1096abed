"""The backfill curve: retrieval accuracy against the fraction of the gallery re-embedded.

The picture an engineer needs to plan a migration from OLD to NEW: for each
backfill policy (:mod:`.backfill`), queries embedded by NEW searched against
the gallery with a fraction f in 0 %, 10 %, ..., 100 % of its items re-embedded
by NEW in that policy's order, the rest holding OLD vectors. At 0 % this is the
new/old cross test of the compatibility matrix, at 100 % new/new (Biondi et
al., CVPR 2024, Def. 1 asks new/old > old/old; old/old is drawn as the
reference line). Metrics: recall@1 over the full mixed gallery and the paper's
template (1:N) accuracy, both from :mod:`compatkit.retrieval`.

Nothing on disk changes: OLD's vectors are the stored ones where the index
holds OLD vectors (and are embedded where it does not), NEW's vectors are
embedded (or read where NEW already holds them), every vector is rounded to the
index's dtype as a backfill would store it, and the fractions are mixed in
memory. Each policy starts from a gallery of OLD vectors and takes one step per
fraction, planned by the function ``index backfill`` plans with (same seed) on
the mixed gallery the previous step left: the curve is what running ``index
backfill --fraction`` at 10 %, 20 %, ... serves after each run. Memory: three
``(N, d)`` float32 arrays (OLD, NEW, the mix); a curve over a 100k x 1023 gallery
needs about 1.2 GB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..retrieval import recall_at_k, template_accuracy
from ..runtime.files import atomic_write_json, atomic_write_text
from .backfill import source_images
from .index import (
    Gallery,
    class_lookup,
    embed_all,
    embed_in_chunks,
    load_for_model,
    require_dim,
    short,
)
from .policies import POLICIES, VectorSource, priority
from .store import DEFAULT_TIMEOUT

__all__ = ["backfill_curve", "plot_curve", "render_table"]

METRICS = ("recall@1", "template")
METRIC_NAMES = {"recall@1": "recall@1 (%)", "template": "template accuracy (%)"}


def _fractions(steps: int) -> list[float]:
    if steps < 1:
        raise InputError(f"--steps {steps}: must be at least 1")
    return [i / steps for i in range(steps + 1)]


def _metrics(q: torch.Tensor, qy: torch.Tensor, g: torch.Tensor, gy: torch.Tensor) -> dict:
    return {
        "recall@1": recall_at_k(q, qy, g, gy, ks=(1,), backend="torch")[1],
        "template": template_accuracy(q, qy, g, gy),
    }


def _model_vectors(
    gallery: Gallery,
    versions: list[str],
    emb,
    images: Callable[[], Any],
    batch_size: int,
    device: str | None,
) -> np.ndarray:
    """The model's vectors of every item, rounded to the gallery's dtype: stored where the
    gallery holds this model's vectors, embedded from the source images elsewhere."""
    out = np.empty((gallery.count, gallery.dim), dtype=np.float32)
    stored = np.array([v == emb.fingerprint for v in versions], dtype=bool)
    if stored.any():
        out[stored] = gallery.vectors(np.flatnonzero(stored))
    missing = np.flatnonzero(~stored)
    if missing.size:
        for p, v in embed_in_chunks(emb, images(), missing, batch_size=batch_size, device=device):
            out[p] = v.astype(gallery.store.dtype)
    return out


def _policy_curve(
    policy: str,
    fractions: Sequence[float],
    seed: int,
    labels: np.ndarray,
    vec: dict[str, np.ndarray],
    q: torch.Tensor,
    qy: torch.Tensor,
    gy: torch.Tensor,
) -> dict:
    """One policy's points: from all-OLD, one backfill step per fraction, each planned by
    :func:`.backfill.priority` on the mixed gallery the previous step left (what
    ``index backfill --fraction f`` run at each fraction in turn does)."""
    n = labels.size
    mixed = vec["old"].copy()
    is_new = np.zeros(n, dtype=bool)
    rows: dict[str, list] = {m: [] for m in METRICS}
    steps = []
    for f in fractions:
        need = round(f * n) - int(is_new.sum())
        if need > 0:
            order, why = priority(
                policy,
                np.flatnonzero(~is_new),
                seed,
                n,
                labels,
                stored=VectorSource.of_array(mixed),
                new=lambda p: vec["new"][p],
            )
            take = order[:need]
            mixed[take] = vec["new"][take]
            is_new[take] = True
            steps.append({"fraction": f, "decided": why})
        for m, v in _metrics(q, qy, torch.from_numpy(mixed), gy).items():
            rows[m].append(v)
    return {**rows, "steps": steps}


def backfill_curve(
    index: str | os.PathLike,
    old: str | os.PathLike,
    new: str | os.PathLike,
    query: str,
    policies: Sequence[str] = POLICIES,
    steps: int = 10,
    seed: int = 0,
    split: str | None = None,
    data: str | None = None,
    batch_size: int = 256,
    device: str | None = "cpu",
    collection: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure the curve (see the module docstring); a JSON-able dict."""
    from .embed import load_embedder

    say = log or (lambda _msg: None)
    fractions = _fractions(steps)
    for p in policies:
        if p not in POLICIES:
            raise InputError(f"--policies: unknown policy {p!r}; use any of {list(POLICIES)}")
    embs = {"old": load_embedder(old), "new": load_embedder(new)}
    with Gallery.open(index, collection, timeout) as gallery:
        for role, e in embs.items():
            require_dim(gallery, e.feat_dim, f"{role} model {e.path}")
        labels = gallery.column("label")
        versions = gallery.column("version")
        cache: dict[str, Any] = {}

        def images_for(role: str) -> Callable[[], Any]:
            def get():
                if role not in cache:
                    say(f"reading the gallery's images for the {role} model")
                    cache[role] = source_images(gallery, embs[role], data)
                return cache[role]

            return get

        say("embedding the gallery")
        vec = {
            r: _model_vectors(gallery, versions, e, images_for(r), batch_size, device)
            for r, e in embs.items()
        }
        gy = torch.from_numpy(labels)
        q, qy = {}, None
        for role, e in embs.items():
            qdata, _ = load_for_model(e, query, split)
            names = [qdata.classes[int(y)] for y in qdata.labels]
            qy = torch.from_numpy(class_lookup(gallery, names))
            q[role] = torch.from_numpy(embed_all(e, qdata, batch_size, device))
        count = gallery.count
    if not bool((qy >= 0).any()):
        raise InputError(f"query {query}: none of its classes is in index {index}")
    ref = {
        "old/old": _metrics(q["old"], qy, torch.from_numpy(vec["old"]), gy),
        "new/old": _metrics(q["new"], qy, torch.from_numpy(vec["old"]), gy),
        "new/new": _metrics(q["new"], qy, torch.from_numpy(vec["new"]), gy),
    }
    curves: dict[str, dict] = {}
    for policy in policies:
        say(f"policy {policy}")
        curves[policy] = _policy_curve(policy, fractions, seed, labels, vec, q["new"], qy, gy)
    return {
        "format": "compatkit-backfill-curve",
        "format_version": 1,
        "index": str(index),
        "old": {"path": str(old), "fingerprint": embs["old"].fingerprint},
        "new": {"path": str(new), "fingerprint": embs["new"].fingerprint},
        "query": query,
        "items": count,
        "queries": int((qy >= 0).sum()),
        "seed": int(seed),
        "fractions": fractions,
        "reference": ref,
        "policies": curves,
    }


def render_table(curve: dict) -> str:
    """Markdown: one row per fraction, one column per policy and metric."""
    pols = list(curve["policies"])
    head = ["backfilled"] + [f"{p} {m}" for m in METRICS for p in pols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, f in enumerate(curve["fractions"]):
        cells = [f"{100 * f:.0f}%"] + [
            f"{curve['policies'][p][m][i]:.2f}" for m in METRICS for p in pols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    r = curve["reference"]
    lines.append("")
    lines.append(
        "Reference (query model / gallery model): "
        + ", ".join(
            f"{k} recall@1 {v['recall@1']:.2f}, template {v['template']:.2f}" for k, v in r.items()
        )
    )
    lines.append(
        f"OLD {short(curve['old']['fingerprint'])}, NEW {short(curve['new']['fingerprint'])}; "
        f"{curve['items']} gallery items, {curve['queries']} queries."
    )
    return "\n".join(lines)


def plot_curve(curve: dict, path: str | os.PathLike) -> Path:
    """Two panels (recall@1, template accuracy) against the backfilled fraction, one line per
    policy, with old/old dashed: above it the mixed gallery serves better than before the
    update."""
    from ..report.style import new_figure as _new_figure
    from ..report.style import save as _save

    fig = _new_figure(10.0, 4.0)
    x = [100 * f for f in curve["fractions"]]
    for i, m in enumerate(METRICS):
        ax = fig.add_subplot(1, 2, i + 1)
        for p, c in curve["policies"].items():
            ax.plot(x, c[m], marker="o", markersize=3, label=p)
        ax.axhline(curve["reference"]["old/old"][m], color="0.4", ls="--", lw=1, label="old/old")
        ax.set_xlabel("gallery re-embedded by NEW (%)")
        ax.set_ylabel(METRIC_NAMES[m])
        ax.set_xlim(0, 100)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle("Backfill curve: queries by NEW on a gallery mixing OLD and NEW vectors")
    return _save(fig, path)


def write_curve(curve: dict, out: str | os.PathLike) -> dict[str, Path]:
    """``curve.json``, ``curve.md`` and ``curve.png`` in the folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "curve.json", curve)
    atomic_write_text(out / "curve.md", render_table(curve) + "\n")
    return {
        "json": out / "curve.json",
        "table": out / "curve.md",
        "plot": plot_curve(curve, out / "curve.png"),
    }
