"""``compatkit check``: may NEW query a gallery that OLD embedded (no backfill)?

The empirical criterion of BCT (Shen et al., CVPR 2020), used by Biondi et
al., CVPR 2024 (docs/method.md §1): NEW is compatible with OLD when
``M(query by NEW, gallery by OLD) > M(query by OLD, gallery by OLD)``, strictly,
for a retrieval metric M. The gate measures, on the user's query and gallery
images, the 2x2 compatibility matrix

    old/old = M(OLD queries, OLD gallery)   what the service gives today
    new/old = M(NEW queries, OLD gallery)   what it gives after the upgrade, before any backfill
    new/new = M(NEW queries, NEW gallery)   what it gives after a full backfill

for recall@1 and mAP over the full gallery and the paper's template accuracy
(nearest class template), with the verdicts of the strict criterion (new/old >
old/old) and of new/new > old/old, all of it for every query, for the queries
of classes OLD was trained on and for those of classes OLD never saw (by class
name). Next to them: Definition 1 in expectation and per pair
(``compatkit.analysis.stats.definition1_pairs``: are same-class distances across
models no larger, and different-class ones no smaller, than within OLD?), and
per class how far its centre moved from OLD to NEW, which tells a partial
backfill where to start.

Decision (the exit code): the strict criterion on one metric (``recall@1`` by
default; ``mAP`` or ``template`` on request) over one scope of queries (``all``
by default; ``old``, ``unseen``, or ``each`` = every non-empty scope), with an
optional tolerance in percentage points (``new/old > old/old - tolerance``) and
optionally also requiring ``new/new > old/old``. Recall@1 decides by default
because it is what a search service returns to its users (the nearest gallery
item); the paper's template accuracy assumes a gallery reduced to one template
per class, which a service rarely holds.

Two models whose contracts cannot share a gallery (another K, another feature
size, a class moved to another vertex) are not compatible whatever the
numbers: the verdict says why and no feature is extracted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis.pairs import class_margins
from ..analysis.stats import class_mean_directions, definition1_pairs
from ..checkpoint import check_compatible
from ..data.stream import ReadReport
from ..errors import DataError, IncompatibleModels, InputError
from ..retrieval import cross_model_matrix, recall_at_k
from .data import Items, open_items
from .embed import Embedder, load_embedder

__all__ = ["FORMAT", "FORMAT_VERSION", "METRICS", "SCOPES", "render", "run_check"]

FORMAT = "compatkit-check"
FORMAT_VERSION = 1
METRICS = ("recall@1", "mAP", "template")
SCOPES = ("all", "old", "unseen", "each")
GROUPS = ("all", "old", "unseen")
GROUP_TITLES = {
    "all": "all queries",
    "old": "classes OLD was trained on",
    "unseen": "classes OLD never saw",
}


def _model_info(e: Embedder) -> dict:
    c = e.contract
    return {
        "path": e.path,
        "fingerprint": e.fingerprint,
        "backbone": c.get("backbone"),
        "head": c.get("head"),
        "num_classes": c.get("num_classes"),
        "feat_dim": c.get("feat_dim"),
        "classes": sorted(e.class_names.values()),
        "method": e.meta.get("extra", {}).get("method"),
        "format": e.meta.get("format", "compatkit-checkpoint"),
    }


def _embedded(
    e: Embedder,
    items: Items,
    batch_size: int,
    workers: int,
    strict: bool,
    device: str,
    say: Callable[[str], None],
) -> tuple[torch.Tensor, np.ndarray, ReadReport]:
    """Unit features of ``items`` by model ``e`` (streamed at its preprocessing) and the
    positions of the items read (an unreadable file is skipped)."""
    rep = ReadReport()
    feats, pos = [], []
    for p, f in e.embed_items(items, batch_size, workers, strict, device, rep, say):
        pos.append(p)
        feats.append(f)
    if not feats:
        raise DataError(f"data {items.spec}: none of its {len(items)} images could be read")
    return torch.cat(feats), np.concatenate(pos), rep


def _class_names(items: Items, what: str) -> list[str]:
    if not items.labelled:
        raise DataError(
            f"{what} {items.spec}: unlabelled images; the gate needs each image's class "
            "(one sub-folder per class, or a list with labels)"
        )
    return list(items.classes)


def _labels(items: Items, pos: np.ndarray, names: list[str]) -> torch.Tensor:
    """Labels of the items at ``pos`` as indices into ``names``."""
    index = {c: i for i, c in enumerate(names)}
    lut = np.array([index[c] for c in items.classes], dtype=np.int64)
    return torch.from_numpy(lut[items.labels[pos]])


def _names(query: list[str], gallery: list[str]) -> list[str]:
    names = list(gallery)
    names += [c for c in query if c not in set(names)]
    return names


def _triple(qo, qn, go, gn, ql, gl, metric: str) -> dict | None:
    """old/old, new/old, new/new of one metric, or None when no query's class is in the gallery."""
    try:
        m = cross_model_matrix([qo, qn], [go, gn], ql, gl, metric=metric)
    except ValueError as e:
        if "no query has a class present in the gallery" in str(e):
            return None
        raise
    return _verdicts(float(m[0, 0]), float(m[1, 0]), float(m[1, 1]))


def _verdicts(oo: float, no: float, nn: float) -> dict:
    return {
        "old_old": oo,
        "new_old": no,
        "new_new": nn,
        "strict": no > oo,
        "new_new_gt_old_old": nn > oo,
    }


def _pooled(parts: list[tuple[dict | None, int]]) -> dict | None:
    """A metric over the union of disjoint query sets, from each set's value and the number
    of its queries the metric counted (every metric here is a mean over counted queries)."""
    parts = [(t, n) for t, n in parts if t is not None and n > 0]
    if not parts:
        return None
    total = sum(n for _, n in parts)
    return _verdicts(
        *(sum(t[k] * n for t, n in parts) / total for k in ("old_old", "new_old", "new_new"))
    )


def _definition1(qn, qo, go, ql, gl, max_pairs: int) -> dict:
    d1 = definition1_pairs(qn, qo, go, ql, gl, metric="cosine", max_pairs=max_pairs)
    out: dict[str, Any] = {"metric": "cosine (1 - cos)", "max_pairs_per_group": max_pairs}
    for g in ("same", "diff"):
        x = d1[g]
        out[g] = {
            "pairs": x["n_pairs"],
            "of": x["n_total"],
            "frac": x["frac"],
            "expect_new": x["expect_new"]["mean"],
            "expect_old": x["expect_old"]["mean"],
            "gap_new_minus_old": x["gap_new_minus_old"]["mean"],
            "gap_ci95": [x["gap_new_minus_old"]["low"], x["gap_new_minus_old"]["high"]],
            "holds_in_expectation": x["holds_in_expectation"],
        }
    out["class_margin"] = class_margins(d1)
    return out


def _per_class(
    qo, qn, go, gn, ql, gl, names: list[str], old_names: set[str], new_names: set[str]
) -> list[dict]:
    """Recall@1 of each query class in the three settings and its centre's drift OLD -> NEW."""
    present = torch.unique(ql).tolist()
    cls_o, dir_o = class_mean_directions(qo, ql)
    cls_n, dir_n = class_mean_directions(qn, ql)
    assert torch.equal(cls_o, cls_n)
    cos = (dir_o * dir_n).sum(dim=1).clamp(-1.0, 1.0)
    drift = dict(zip(cls_o.tolist(), torch.rad2deg(torch.arccos(cos)).tolist(), strict=True))
    gallery_classes = set(torch.unique(gl).tolist())
    rows = []
    for c in present:
        sel = ql == c
        row = {
            "class": names[c],
            "queries": int(sel.sum()),
            "known_to_old": names[c] in old_names,
            "known_to_new": names[c] in new_names,
            "centre_drift_deg": float(drift[c]),
            "feature_cosine": float((qo[sel] * qn[sel]).sum(dim=1).mean()),
        }
        if c in gallery_classes:
            lab = ql[sel]
            row["recall@1"] = {
                "old_old": recall_at_k(qo[sel], lab, go, gl, (1,))[1],
                "new_old": recall_at_k(qn[sel], lab, go, gl, (1,))[1],
                "new_new": recall_at_k(qn[sel], lab, gn, gl, (1,))[1],
            }
        rows.append(row)
    return rows


def _decide(groups: dict, metric: str, scope: str, tolerance: float, improvement: bool) -> dict:
    scopes = [g for g in GROUPS if groups.get(g)] if scope == "each" else [scope]
    reasons, ok = [], True
    for s in scopes:
        g = groups.get(s)
        t = g["metrics"].get(metric) if g else None
        if t is None:
            raise InputError(
                f"--scope {s}: no query of {GROUP_TITLES[s]} has its class in the gallery, so "
                "there is nothing to decide on; choose another --scope"
            )
        passed = t["new_old"] > t["old_old"] - tolerance
        sign = ">" if passed else "<="
        bound = f"old/old {t['old_old']:.2f}" + (f" - {tolerance:g}" if tolerance else "")
        reasons.append(f"{s}: {metric} new/old {t['new_old']:.2f} {sign} {bound}")
        ok &= passed
        if improvement:
            better = t["new_new"] > t["old_old"]
            reasons.append(
                f"{s}: {metric} new/new {t['new_new']:.2f} {'>' if better else '<='} "
                f"old/old {t['old_old']:.2f}"
            )
            ok &= better
    return {
        "metric": metric,
        "scope": scope,
        "tolerance_pp": tolerance,
        "require_improvement": improvement,
        "reasons": reasons,
    }, ok


def run_check(
    old_path: str,
    new_path: str,
    query_spec: str,
    gallery_spec: str,
    metric: str = "recall@1",
    scope: str = "all",
    tolerance: float = 0.0,
    require_improvement: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    max_pairs: int = 200_000,
    log: Callable[[str], None] | None = None,
    workers: int = 0,
    strict: bool = False,
) -> dict:
    """The gate's verdict as a JSON-able dict (``format`` ``compatkit-check``, version 1).

    ``compatible`` is the decision described in the module docstring; ``groups``
    holds, for ``all``, ``old`` and ``unseen`` queries, the three numbers of each
    metric with both verdicts, Definition 1 and the feature drift; ``per_class``
    the same by class.
    """
    if metric not in METRICS:
        raise InputError(f"--metric must be one of {list(METRICS)}, got {metric!r}")
    if scope not in SCOPES:
        raise InputError(f"--scope must be one of {list(SCOPES)}, got {scope!r}")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InputError(f"--tolerance must be a finite number of points >= 0, got {tolerance}")
    say = log or (lambda _msg: None)
    old, new = load_embedder(old_path), load_embedder(new_path)
    verdict: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "old": _model_info(old),
        "new": _model_info(new),
        "query": {"spec": query_spec},
        "gallery": {"spec": gallery_spec},
    }
    try:
        check_compatible(old.contract, new.contract, names=("OLD", "NEW"))
    except IncompatibleModels as e:
        verdict["contract"] = {"ok": False, "reason": str(e)}
        verdict["decision"] = {"metric": metric, "scope": scope, "reasons": [str(e)]}
        verdict["compatible"] = False
        return verdict
    verdict["contract"] = {"ok": True, "reason": None}

    q_items, g_items = open_items(query_spec), open_items(gallery_spec)
    names = _names(_class_names(q_items, "query"), _class_names(g_items, "gallery"))
    for items in (q_items, g_items):
        if items.left_out():
            say(f"{items.spec}: {items.left_out()}")
    feats, skipped = {}, 0
    for who, e in (("old", old), ("new", new)):
        say(
            f"embedding {len(q_items)} queries and {len(g_items)} gallery images with {who.upper()}"
        )
        q = _embedded(e, q_items, batch_size, workers, strict, device, say)
        g = _embedded(e, g_items, batch_size, workers, strict, device, say)
        feats[who] = (q, g)
        skipped = max(skipped, q[2].skipped + g[2].skipped)
    sides = []
    for k, items in enumerate((q_items, g_items)):
        (fo, po, _), (fn, pn, _) = feats["old"][k], feats["new"][k]
        both = np.intersect1d(po, pn)  # a file unreadable for either model is left out of both
        fo, fn = fo[np.searchsorted(po, both)], fn[np.searchsorted(pn, both)]
        sides.append((fo, fn, _labels(items, both, names), len(both)))
    (qo, qn, ql, nq), (go, gn, gl, ng) = sides
    old_names = set(old.class_names.values())
    new_names = set(new.class_names.values())
    verdict["query"].update(images=nq, classes=len(torch.unique(ql)))
    verdict["gallery"].update(images=ng, classes=len(torch.unique(gl)))
    if skipped:
        verdict["unreadable_files"] = skipped
        say(f"{skipped} unreadable file(s) skipped")

    in_old = torch.tensor([names[int(c)] in old_names for c in ql], dtype=torch.bool)
    masks = {"all": torch.ones_like(in_old), "old": in_old, "unseen": ~in_old}
    if not old_names:
        masks = {"all": masks["all"]}
        verdict["note"] = "OLD's checkpoint names no classes: queries are not split by class"
    groups: dict[str, Any] = {}
    counted = torch.isin(ql, torch.unique(gl))  # queries whose class the gallery has
    # The split groups first; "all" pools them (each metric is a mean over counted queries),
    # which halves the work of the full-gallery rankings.
    for g in sorted(masks, key=lambda k: k == "all"):
        m = masks[g]
        if not bool(m.any()):
            groups[g] = None
            continue
        sq_o, sq_n, sl = qo[m], qn[m], ql[m]
        if g == "all" and len(masks) == 3:
            n = {k: int((masks[k] & counted).sum()) for k in ("old", "unseen")}
            mets = {
                k: _pooled([(groups[s_]["metrics"][k] if groups[s_] else None, n[s_]) for s_ in n])
                for k in METRICS
            }
        else:
            mets = {k: _triple(sq_o, sq_n, go, gn, sl, gl, k) for k in METRICS}
        groups[g] = {
            "queries": int(m.sum()),
            "classes": sorted({names[int(c)] for c in torch.unique(sl)}),
            "metrics": mets,
            "definition1": _definition1(sq_n, sq_o, go, sl, gl, max_pairs),
            "feature_cosine": float(F.cosine_similarity(sq_o, sq_n, dim=1).mean()),
        }
    verdict["groups"] = {g: groups[g] for g in masks}
    verdict["per_class"] = _per_class(qo, qn, go, gn, ql, gl, names, old_names, new_names)
    decision, ok = _decide(groups, metric, scope, tolerance, require_improvement)
    verdict["decision"] = decision
    verdict["compatible"] = bool(ok)
    return verdict


# ----------------------------------------------------------------------------- display


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _yes(b: bool | None) -> str:
    return "-" if b is None else ("yes" if b else "NO")


def render(v: dict) -> str:
    """The verdict as text for a terminal or a CI log."""
    lines = [
        f"OLD {v['old']['path']} ({v['old']['fingerprint'][:12]}, {v['old']['head']}, "
        f"K={v['old']['num_classes']}, {len(v['old']['classes'])} classes)",
        f"NEW {v['new']['path']} ({v['new']['fingerprint'][:12]}, {v['new']['head']}, "
        f"K={v['new']['num_classes']}, {len(v['new']['classes'])} classes)",
    ]
    if not v["contract"]["ok"]:
        lines.append(f"contract: {v['contract']['reason']}")
        lines.append("verdict: NOT COMPATIBLE (the two models cannot share a gallery)")
        return "\n".join(lines)
    q, g = v["query"], v["gallery"]
    lines.append(
        f"query {q['spec']}: {q['images']} images, {q['classes']} classes; "
        f"gallery {g['spec']}: {g['images']} images, {g['classes']} classes"
    )
    if v.get("note"):
        lines.append(f"note: {v['note']}")
    for name in GROUPS:
        grp = v["groups"].get(name)
        if name not in v["groups"]:
            continue
        lines.append("")
        if grp is None:
            lines.append(f"{GROUP_TITLES[name]}: no queries")
            continue
        lines.append(
            f"{GROUP_TITLES[name]} ({grp['queries']} queries, {len(grp['classes'])} classes)"
        )
        lines.append(
            f"  {'metric':10s} {'old/old':>8s} {'new/old':>8s} {'new/new':>8s}   "
            f"{'new/old > old/old':>17s}   {'new/new > old/old':>17s}"
        )
        for k in METRICS:
            t = grp["metrics"][k]
            if t is None:
                lines.append(f"  {k:10s} (no query class is in the gallery)")
                continue
            lines.append(
                f"  {k:10s} {t['old_old']:8.2f} {t['new_old']:8.2f} {t['new_new']:8.2f}   "
                f"{_yes(t['strict']):>17s}   {_yes(t['new_new_gt_old_old']):>17s}"
            )
        d1 = grp["definition1"]
        s, dd = d1["same"], d1["diff"]
        lines.append(
            "  Definition 1 (cosine distance, new query vs old gallery against old vs old): "
            f"same class {_fmt(s['expect_new'], 3)} vs {_fmt(s['expect_old'], 3)} "
            f"(holds in expectation: {_yes(s['holds_in_expectation'])}, per pair "
            f"{_fmt(100 * s['frac'] if s['frac'] is not None else None, 1)} %); different class "
            f"{_fmt(dd['expect_new'], 3)} vs {_fmt(dd['expect_old'], 3)} (holds: "
            f"{_yes(dd['holds_in_expectation'])}, per pair "
            f"{_fmt(100 * dd['frac'] if dd['frac'] is not None else None, 1)} %)"
        )
        lines.append(
            f"  mean cosine between NEW and OLD features of the same image: "
            f"{grp['feature_cosine']:.3f}"
        )
    rows = [r for r in v.get("per_class", []) if "recall@1" in r]
    if rows:
        lines.append("")
        lines.append("per class (recall@1; drift = angle between the class centres of OLD and NEW)")
        lines.append(
            f"  {'class':16s} {'OLD knows':>9s} {'old/old':>8s} {'new/old':>8s} {'new/new':>8s} "
            f"{'drift':>7s}"
        )
        for r in sorted(rows, key=lambda r: r["recall@1"]["new_old"] - r["recall@1"]["old_old"]):
            t = r["recall@1"]
            lines.append(
                f"  {r['class'][:16]:16s} {_yes(r['known_to_old']):>9s} {t['old_old']:8.2f} "
                f"{t['new_old']:8.2f} {t['new_new']:8.2f} {r['centre_drift_deg']:6.1f}°"
            )
    d = v["decision"]
    lines.append("")
    lines.append(f"decided on {d['metric']}, scope {d['scope']}: " + "; ".join(d["reasons"]))
    lines.append(
        "verdict: COMPATIBLE (NEW may query the OLD gallery)"
        if v["compatible"]
        else "verdict: NOT COMPATIBLE (a full or partial backfill is needed)"
    )
    return "\n".join(lines)
