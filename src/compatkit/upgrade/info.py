"""``compatkit index info``: what a gallery holds (versions and their vectors, the vector
index, an unfinished backfill, the recorded checks) and, with ``verify``, a full scan that
checks every entity against the records.
"""

from __future__ import annotations

import os

import numpy as np

from .index import Gallery, load_checks, short
from .ledger import read_plan
from .store import DEFAULT_TIMEOUT, engine_of

__all__ = ["describe", "verify"]


def verify(g: Gallery) -> list[str]:
    """Every problem a full scan finds: positions not exactly 0..N-1, repeated ids, a
    vector that is not finite or not of unit length, a label outside the classes or a
    class name that disagrees with it, a version the records do not know."""
    n, classes = g.count, g.classes or []
    known = {v["fingerprint"] for v in g.versions}
    seen = np.zeros(n, dtype=bool)
    ids: set[str] = set()
    problems: list[str] = []

    def add(msg: str) -> None:
        if len(problems) < 20:
            problems.append(msg)

    cols = ("vector", "item_id", "label", "class_name", "version")
    for rows in g.store.scan(cols):
        p = rows.pos
        bad = (p < 0) | (p >= n)
        if bad.any():
            add(f"item position {int(p[bad][0])} lies outside 0..{n - 1}")
            p = p[~bad]
        if seen[p].any() or len(np.unique(p)) != p.size:
            add("an item position is stored twice")
        seen[p] = True
        v = rows.vectors
        finite = np.isfinite(v).all(axis=1)
        if not finite.all():
            add(f"the vector of item position {int(rows.pos[~finite][0])} is not finite")
        norm = np.linalg.norm(np.where(finite[:, None], v, 0), axis=1)
        off = finite & (np.abs(norm - 1) > 0.01)  # float16 rounding moves a norm by ~1e-3
        if off.any():
            add(f"the vector of item position {int(rows.pos[off][0])} has norm {norm[off][0]:.3f}")
        for i, (iid, y, name, ver) in enumerate(
            zip(rows.ids, rows.labels.tolist(), rows.classes, rows.versions, strict=True)
        ):
            if iid in ids:
                add(f"item id {iid!r} is stored twice")
            ids.add(iid)
            if not 0 <= y < len(classes) or classes[y] != name:
                add(f"item {iid!r}: label {y} / class {name!r} disagree with the class list")
            if ver not in known:
                add(f"item {iid!r} (position {int(rows.pos[i])}): unknown version {ver[:16]!r}")
    if not seen.all():
        add(f"{int((~seen).sum())} item positions have no vector")
    return problems


def _pending(g: Gallery) -> dict | None:
    plan = read_plan(g.store, g.doc, g.versions)
    if plan is None:
        return None
    order = np.asarray(plan["order"], dtype=np.int64)
    done = 0
    for a in range(0, order.size, 65536):
        vers = g.store.fetch(order[a : a + 65536], ("version",)).versions
        done += sum(v == plan["new"] for v in vers)
    out = {k: plan.get(k) for k in ("new", "model", "policy", "fraction", "seed", "chunk")}
    out.update(planned=int(order.size), done=int(done))
    return out


def describe(
    index: str | os.PathLike,
    verify_all: bool = False,
    collection: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    """What ``compatkit index info`` shows, as a JSON-able dict with its ``text``."""
    with Gallery.open(index, collection, timeout) as g:
        versions = [
            {
                "fingerprint": v["fingerprint"],
                "model": v["model"],
                "added": v["added"],
                "vectors": g.counts[v["fingerprint"]],
            }
            for v in g.versions
        ]
        pending = _pending(g)
        checks = [
            {
                "old": short(c["old"]["fingerprint"]),
                "new": short(c["new"]["fingerprint"]),
                "compatible": c["compatible"],
            }
            for c in load_checks(g)
        ]
        vindex = g.store.index_info()
        size = getattr(g.store, "size_bytes", lambda: None)()
        problems = verify(g) if verify_all else []
        engine = engine_of(str(index))
        where = (
            f"{engine}, {g.store.dtype} vectors"
            + (f", {size / 2**20:.1f} MiB" if size is not None else "")
            + (f", table version {g.store.table_version()}" if engine == "lancedb" else "")
        )
        count, dim, classes = g.count, g.dim, g.classes
    lines = [
        f"index {index}: {count} items, {dim}-d ({where})",
        f"classes: {len(classes)}" if classes else "classes: none",
        "vector index: "
        + (
            "none (exact search)"
            if vindex is None
            else f"{vindex['type']} ({vindex['indexed']} indexed, {vindex['unindexed']} not yet)"
        ),
        "versions (vectors now held):",
    ]
    for v in versions:
        share = 100.0 * v["vectors"] / count
        lines.append(
            f"  {short(v['fingerprint'])}  {v['vectors']:>9} ({share:5.1f}%)  {v['model']}  "
            f"added {v['added']}"
        )
    if pending:
        lines.append(
            f"unfinished backfill: {pending['done']}/{pending['planned']} items by "
            f"{short(pending['new'])} (policy {pending['policy']}, fraction "
            f"{pending['fraction']}); rerun the same backfill command to finish it"
        )
    lines.append(f"recorded checks: {len(checks)}")
    for c in checks:
        verdict = "compatible" if c["compatible"] else "NOT compatible"
        lines.append(f"  old {c['old']} -> new {c['new']}: {verdict}")
    if verify_all:
        lines.append(
            "verify: every entity agrees with the records"
            if not problems
            else f"verify: {len(problems)} problem(s): " + "; ".join(problems)
        )
    return {
        "index": str(index),
        "engine": engine,
        "count": count,
        "dim": dim,
        "dtype": where.split(", ")[1].split()[0],
        "vector_index": vindex,
        "versions": versions,
        "pending_backfill": pending,
        "checks": checks,
        "problems": problems,
        "text": "\n".join(lines),
    }
