"""The versioned gallery: build it, search it, and decide which models may query it.

A retrieval service that adopts a compatible update (Biondi et al., CVPR 2024,
Sec. 1 and Def. 1: the new model's queries against the old model's gallery
must do better than the old model did) serves queries of the new model against
vectors of the old one, and, during a partial backfill, of both. This module is
the service side of that promise:

- :func:`build_index`: embed a gallery with a model and store it (see
  :mod:`.index_store` for the format);
- :func:`search_index`: embed queries with a model and search, after the
  compatibility gate below; with labelled queries, recall@1 and mAP too;
- :func:`record_check`: store a ``compatkit check`` verdict in the index, which
  is what the gate reads.

The gate (:func:`gate_problems`). A model M may search the index when, for
every version V that holds vectors in it now:

1. M's contract is compatible with V's (:func:`compatkit.checkpoint.check_compatible`:
   same feature dimension and input channels; for fixed heads the same kind, K,
   and every class on the same vertex), and
2. M *is* V, or the most recent recorded check between V and M (either
   direction) found the pair compatible.

A model refused by (1) or (2) is searched anyway with ``force=True``, with a
warning; a different feature dimension cannot be searched at all. Rule 2 reads
"either direction" because a recorded check measures one pair of models on one
query/gallery pair; the last word on that pair is the most recent verdict.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import check_compatible
from ..errors import DataError, IncompatibleModels, InputError
from .index_search import ranking_scores, search
from .index_store import (
    CHECKS,
    CHECKS_LOCK,
    DTYPES,
    Gallery,
    IndexBuilder,
    locked,
    read_json,
    utc_now,
    write_json,
)

__all__ = [
    "DTYPES",
    "Gallery",
    "build_index",
    "class_lookup",
    "describe",
    "embed_all",
    "embed_in_chunks",
    "gate_problems",
    "load_checks",
    "load_for_model",
    "read_plan",
    "record_check",
    "require_searchable",
    "search_index",
    "short",
    "version_extra",
]

CHECK_FORMAT = "compatkit-check"
CHECKS_FORMAT = "compatkit-index-checks"
EMBED_CHUNK = 8192
"""Images embedded (and vectors written) per step of a build or backfill."""
MAP_AUTO_LIMIT = 10**9
"""Query x gallery scores above which search skips mAP unless asked: a full ranking per
query (1,000 queries over 1M items is about a minute of one core; mAP of 10,000 queries
would cost ten times the search itself)."""


def short(fingerprint: str) -> str:
    """The first 12 hex digits: enough to tell versions apart in messages."""
    return str(fingerprint)[:12]


# ----------------------------------------------------------------------------- data + model


def load_for_model(emb, spec: str, split: str | None = None):
    """``(ImageSet, ids)`` of ``spec`` at the embedder's input size and channels."""
    from .data import load_user_items

    c, h, w = emb.input_size
    size = h if h is not None and h == w else None
    return load_user_items(spec, split, image_size=size, channels=c)


def embed_in_chunks(
    emb,
    data,
    positions: Sequence[int] | np.ndarray | None = None,
    chunk: int = EMBED_CHUNK,
    batch_size: int = 256,
    device: str | None = "cpu",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions, float32 unit vectors)`` of ``data``'s items, ``chunk`` items at a time."""
    pos = np.arange(len(data)) if positions is None else np.asarray(positions, dtype=np.int64)
    for a in range(0, pos.size, chunk):
        p = pos[a : a + chunk]
        sub = data.subset(torch.from_numpy(p))
        yield p, emb.embed(sub, batch_size=batch_size, device=device).numpy()


def embed_all(emb, data, batch_size: int = 256, device: str | None = "cpu") -> np.ndarray:
    """``(N, d)`` float32 unit vectors of every item of ``data``."""
    return np.concatenate(
        [v for _, v in embed_in_chunks(emb, data, None, EMBED_CHUNK, batch_size, device)]
    )


def _source(spec: str, split: str | None) -> dict:
    """Where the gallery's images come from, so that a backfill can read them again."""
    from .data import parse_spec

    kind, where, chosen = parse_spec(spec, split)
    if kind == "folder":
        where = str(Path(where).resolve())
    return {"kind": kind, "data": where, "split": chosen}


def version_extra(emb) -> dict:
    """What a version records besides fingerprint and contract: the model's class names."""
    return {"class_names": {str(k): v for k, v in emb.class_names.items()}}


def build_index(
    model: str | os.PathLike,
    data: str,
    out: str | os.PathLike,
    dtype: str = "float16",
    split: str | None = None,
    batch_size: int = 256,
    device: str | None = "cpu",
    shard_rows: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Gallery:
    """Embed the images of ``data`` with ``model`` and write the index ``out``."""
    from .embed import load_embedder
    from .index_store import DEFAULT_SHARD_ROWS

    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: use one of {list(DTYPES)}")
    if Path(out).exists():
        raise InputError(f"--out {out}: already exists; choose a new path or delete it first")
    emb = load_embedder(model)
    images, ids = load_for_model(emb, data, split)
    src = _source(data, split)
    with IndexBuilder(out, emb.feat_dim, dtype, shard_rows or DEFAULT_SHARD_ROWS, src) as b:
        b.set_version(emb.fingerprint, emb.contract, str(model), version_extra(emb))
        done = 0
        for _, vec in embed_in_chunks(emb, images, batch_size=batch_size, device=device):
            b.add(vec)
            done += vec.shape[0]
            if log:
                log(f"embedded {done}/{len(images)} images")
        b.finish(ids, images.labels.tolist(), images.classes)
    return Gallery.open(out)


# ----------------------------------------------------------------------------- checks + gate


def _check_verdict(verdict: Any) -> dict:
    """A ``compatkit check`` verdict, validated; one line naming the field at fault."""
    if not isinstance(verdict, Mapping):
        raise InputError(f"check verdict must be a JSON object, got {type(verdict).__name__}")
    if verdict.get("format") != CHECK_FORMAT:
        raise InputError(
            f"check verdict: format is {verdict.get('format')!r}, not {CHECK_FORMAT!r}"
        )
    fv = verdict.get("format_version")
    if not isinstance(fv, int) or isinstance(fv, bool) or fv < 1:
        raise InputError(f"check verdict: invalid format_version {fv!r}")
    for side in ("old", "new"):
        m = verdict.get(side)
        if not isinstance(m, Mapping) or not isinstance(m.get("fingerprint"), str):
            raise InputError(f"check verdict: {side!r} must be an object with a 'fingerprint'")
    if not isinstance(verdict.get("compatible"), bool):
        raise InputError("check verdict: 'compatible' must be true or false")
    try:
        return json.loads(json.dumps(verdict, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InputError(f"check verdict is not plain JSON ({e})") from None


def record_check(index: str | os.PathLike, verdict: Mapping) -> dict:
    """Append a ``compatkit check`` verdict to the index's record of checks (atomically).

    The record (``checks.json``) keeps every verdict with the time it was recorded; the
    gate reads the most recent verdict of each pair. Returns the stored entry.
    """
    v = _check_verdict(verdict)
    gallery = Gallery.open(index)  # refuse anything that is not an index
    with locked(gallery.root, CHECKS_LOCK):
        path = gallery.root / CHECKS
        doc = read_json(path, "index checks") if path.is_file() else None
        doc = doc or {"format": CHECKS_FORMAT, "format_version": 1, "checks": []}
        if not isinstance(doc, dict) or not isinstance(doc.get("checks"), list):
            raise DataError(f"index checks {path}: malformed (no 'checks' list)")
        entry = {"recorded": utc_now(), "verdict": v}
        doc["checks"].append(entry)
        write_json(path, doc)
    return entry


def load_checks(index: str | os.PathLike) -> list[dict]:
    """The recorded verdicts, oldest first."""
    path = Path(index) / CHECKS
    if not path.is_file():
        return []
    doc = read_json(path, "index checks")
    if not isinstance(doc, dict) or not isinstance(doc.get("checks"), list):
        raise DataError(f"index checks {path}: malformed (no 'checks' list)")
    out = []
    for i, entry in enumerate(doc["checks"]):
        try:
            out.append(_check_verdict(entry["verdict"]))
        except (TypeError, KeyError, InputError) as e:
            raise DataError(f"index checks {path}: entry {i} is malformed ({e})") from None
    return out


def _latest(checks: Sequence[Mapping], a: str, b: str) -> Mapping | None:
    """The most recent verdict between fingerprints ``a`` and ``b``, either direction."""
    pair = {a, b}
    for v in reversed(checks):
        if {v["old"]["fingerprint"], v["new"]["fingerprint"]} == pair:
            return v
    return None


def gate_problems(
    gallery: Gallery, fingerprint: str, contract: Mapping, checks: Sequence[Mapping]
) -> list[str]:
    """Why the model (``fingerprint``, ``contract``) may not search ``gallery``; [] when it may."""
    problems = []
    counts = gallery.counts_by_version()
    for vi in gallery.live_versions():
        v = gallery.versions[vi]
        name = f"version {short(v['fingerprint'])} ({counts[vi]} vectors)"
        try:
            check_compatible(v["contract"], contract, names=(name, "the model"))
        except IncompatibleModels as e:
            problems.append(str(e))
            continue
        if v["fingerprint"] == fingerprint:
            continue
        verdict = _latest(checks, v["fingerprint"], fingerprint)
        if verdict is None:
            problems.append(
                f"no recorded check between {name} and the model "
                f"(run `compatkit check OLD NEW ... --record INDEX`)"
            )
        elif not verdict["compatible"]:
            problems.append(f"the latest recorded check found {name} and the model incompatible")
    return problems


def require_searchable(
    gallery: Gallery,
    fingerprint: str,
    contract: Mapping,
    feat_dim: int,
    force: bool = False,
    what: str = "model",
) -> list[str]:
    """Raise :class:`IncompatibleModels` unless the gate lets the model in (or ``force``).

    Returns the problems ``force`` overrode (the caller prints them as warnings).
    """
    if int(feat_dim) != gallery.dim:
        raise IncompatibleModels(
            f"{what} makes {feat_dim}-dimensional features but index {gallery.root} holds "
            f"{gallery.dim}-dimensional vectors; they cannot be compared"
        )
    problems = gate_problems(gallery, fingerprint, contract, load_checks(gallery.root))
    if problems and not force:
        raise IncompatibleModels(
            f"index {gallery.root} refuses {what} {short(fingerprint)}: "
            + "; ".join(problems)
            + "; pass --force to search anyway"
        )
    return problems


# ----------------------------------------------------------------------------- search


def class_lookup(gallery: Gallery, names: Sequence[str]) -> np.ndarray:
    """Per name, its class id in the gallery, or -1 when the gallery has no such class."""
    index = {n: i for i, n in enumerate(gallery.classes or [])}
    return np.array([index.get(n, -1) for n in names], dtype=np.int64)


def average_precision(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """AP of each row: ``scores`` in gallery order ranked by a stable descending sort (equal
    scores keep gallery order, as in :mod:`compatkit.retrieval`); rows without a relevant
    item get NaN."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rel = torch.gather(relevant, 1, order).to(torch.float64)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    precision = rel.cumsum(dim=1) / ranks
    n_pos = rel.sum(dim=1)
    ap = (precision * rel).sum(dim=1) / n_pos.clamp(min=1)
    return torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan")))


def mean_ap(
    gallery: Gallery, queries: np.ndarray, query_class: np.ndarray, budget: int = 1 << 24
) -> float | None:
    """mAP (%) over the whole gallery of the queries whose class it holds; None if none.

    A full ranking per query: queries go ``budget // N`` at a time (16M scores, about
    0.4 GB with the sort's work arrays).
    """
    glabels = torch.from_numpy(gallery.labels)
    keep = np.flatnonzero(np.isin(query_class, gallery.labels))
    if keep.size == 0:
        return None
    step = max(1, budget // gallery.count)
    total = 0.0
    for a in range(0, keep.size, step):
        sel = keep[a : a + step]
        scores = ranking_scores(gallery, queries[sel])
        rel = glabels[None, :] == torch.from_numpy(query_class[sel])[:, None]
        total += float(average_precision(scores, rel).sum())
    return 100.0 * total / keep.size


def search_metrics(
    gallery: Gallery,
    queries: np.ndarray,
    query_class: np.ndarray,
    top: np.ndarray,
    with_map: bool | None = None,
) -> dict:
    """recall@1 from the search's top-1 and mAP from a full ranking, in percent, over the
    queries whose class the gallery holds (the others are counted as ``unanswerable``).

    ``with_map``: None computes mAP when the queries x gallery scores number at most
    ``MAP_AUTO_LIMIT`` and says why it did not otherwise (``mAP_skipped``)."""
    answerable = np.isin(query_class, gallery.labels)
    out: dict[str, Any] = {
        "queries": int(query_class.size),
        "unanswerable": int((~answerable).sum()),
    }
    if not answerable.any():
        return out
    hit = gallery.labels[top[:, 0]] == query_class
    out["recall@1"] = 100.0 * float(hit[answerable].mean())
    scores = int(answerable.sum()) * gallery.count
    if with_map is None and scores > MAP_AUTO_LIMIT:
        out["mAP_skipped"] = (
            f"{int(answerable.sum()):,} queries x {gallery.count:,} items need a full ranking "
            "per query; ask for it with --map"
        )
    elif with_map is not False:
        out["mAP"] = mean_ap(gallery, queries, query_class)
    return out


def search_index(
    index: str | os.PathLike,
    model: str | os.PathLike,
    query: str,
    k: int = 10,
    backend: str = "auto",
    force: bool = False,
    split: str | None = None,
    batch_size: int = 256,
    device: str | None = "cpu",
    with_map: bool | None = None,
) -> dict:
    """Embed the images of ``query`` with ``model`` and search the index; a JSON-able dict.

    Keys: ``backend``, ``warnings`` (gate problems ``force`` overrode), ``metrics`` (when
    both queries and gallery carry class names), ``results`` (per query: ``id``,
    ``class`` and the ``k`` neighbours' ``id``, ``score``, ``class``, ``version``).
    """
    from .embed import load_embedder

    gallery = Gallery.open(index)
    emb = load_embedder(model)
    warnings = require_searchable(
        gallery, emb.fingerprint, emb.contract, emb.feat_dim, force, f"model {model}"
    )
    data, qids = load_for_model(emb, query, split)
    q = embed_all(emb, data, batch_size, device)
    res = search(gallery, q, k=k, backend=backend)
    qnames = [data.classes[int(y)] for y in data.labels]
    out: dict[str, Any] = {
        "index": str(index),
        "model": {"path": str(model), "fingerprint": emb.fingerprint},
        "backend": res.backend,
        "k": int(res.positions.shape[1]),
        "warnings": warnings,
    }
    if gallery.labels is not None:
        out["metrics"] = search_metrics(
            gallery, q, class_lookup(gallery, qnames), res.positions, with_map
        )
    out["results"] = [
        {
            "id": qids[i],
            "class": qnames[i],
            "neighbours": [
                {
                    "id": gallery.ids[p],
                    "score": float(s),
                    "class": None if gallery.labels is None else gallery.classes[gallery.labels[p]],
                    "version": short(gallery.versions[gallery.version_of[p]]["fingerprint"]),
                }
                for p, s in zip(res.positions[i], res.scores[i], strict=True)
            ],
        }
        for i in range(len(qids))
    ]
    return out


# ----------------------------------------------------------------------------- info


def read_plan(path: Path) -> dict:
    """An unfinished backfill's plan (``backfill.json``), checked for what is read from it."""
    plan = read_json(path, "index backfill plan")
    order = plan.get("order") if isinstance(plan, dict) else None
    if not isinstance(order, list) or not all(isinstance(i, int) for i in order):
        raise DataError(f"index backfill plan {path}: malformed (no 'order' list of items)")
    return plan


def describe(index: str | os.PathLike, verify: bool = False) -> dict:
    """What ``compatkit index info`` shows: versions and their live counts, shards, disk,
    a pending backfill, recorded checks; ``verify`` re-hashes every shard file."""
    from ..checkpoint import file_sha256
    from .index_store import PLAN

    g = Gallery.open(index)
    counts = g.counts_by_version()
    versions = [
        {
            "fingerprint": v["fingerprint"],
            "model": v.get("model"),
            "added": v.get("added"),
            "vectors": counts.get(i, 0),
        }
        for i, v in enumerate(g.versions)
    ]
    plan_path = g.root / PLAN
    pending = None
    if plan_path.is_file():
        plan = read_plan(plan_path)
        vi = g.version_index(plan.get("new", ""))
        order = np.asarray(plan.get("order", []), dtype=np.int64)
        done = 0 if vi is None else int((g.version_of[order] == vi).sum())
        pending = {k: plan.get(k) for k in ("new", "model", "policy", "fraction", "seed", "chunk")}
        pending.update(planned=int(order.size), done=done)
    checks = [
        {
            "old": short(c["old"]["fingerprint"]),
            "new": short(c["new"]["fingerprint"]),
            "compatible": c["compatible"],
        }
        for c in load_checks(index)
    ]
    corrupt = []
    if verify:
        for sh in g.shards:
            if sh.get("sha256") and file_sha256(g.root / sh["file"]) != sh["sha256"]:
                corrupt.append(sh["file"])
    lines = [
        f"index {g.root}: {g.count} items, {g.dim}-d {g.dtype}, {len(g.shards)} shard(s), "
        f"{g.file_sizes() / 2**20:.1f} MiB, generation {g.generation}",
        f"classes: {len(g.classes)}" if g.classes else "classes: none (unlabelled)",
        "versions (vectors now held):",
    ]
    for v in versions:
        share = 100.0 * v["vectors"] / g.count
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
    if verify:
        lines.append(
            "verify: every shard matches its sha256"
            if not corrupt
            else f"verify: {len(corrupt)} corrupt shard(s): {', '.join(corrupt)}"
        )
    return {
        "index": str(g.root),
        "count": g.count,
        "dim": g.dim,
        "dtype": g.dtype,
        "shards": len(g.shards),
        "versions": versions,
        "pending_backfill": pending,
        "checks": checks,
        "corrupt": corrupt,
        "text": "\n".join(lines),
    }
