"""Partial backfill: re-embed part of a gallery with the new model, in place, resumably.

When an update is not compatible (or not compatible enough), the way out is to
re-embed the gallery with the new model ("backfilling"); on a large gallery
that takes days, and the service keeps answering meanwhile from a gallery that
holds vectors of both models. Which items to re-embed first decides how good
the answers are during the migration; :mod:`.curve` measures it per policy.

Policies (each gives a priority order over the items not yet embedded by NEW):

- ``random``: one seeded permutation of all items (the items already embedded
  by NEW are skipped in it); the baseline every other order must beat.
- ``class``: whole classes, the classes that moved most first. Movement of a
  class = 1 - the mean cosine between the stored vector and the NEW vector of
  up to ``CLASS_SAMPLE`` of its items (a seeded sample, embedded by NEW while
  planning): the classes whose features the update changed most are the ones
  whose old vectors stop matching new queries (the issue's calibration saw new
  classes fall from 80 to 38 recall@1 while old ones held). Inside a class a
  seeded random order, so a class cut by the fraction is a random subset of it.
- ``uncertainty``: items whose stored vector is least confidently assigned to
  its own class: the signed margin cos(own class template) - max cos(other
  class templates), templates being the class means of the stored vectors
  (the paper's 1:N templates, docs/method.md §4). Smallest margin first, so
  items already closer to another class's template (negative margin) go first,
  then the correctly placed items with the smallest lead over the runner-up.

``class`` and ``uncertainty`` need class labels in the index. Ties in any order
go to the lower item position. Both are planned on the gallery as it is when
the command starts (its current vectors, the items not yet NEW), so backfilling
to 20 % and then to 40 % re-plans the second step on the mixed gallery the first
one left, and may pick other items than one step straight to 40 % would; the
random order does not depend on the steps.

Atomic and resumable. ``--fraction F`` is a target: afterwards a fraction F of
the gallery holds NEW vectors. The plan (the items to embed, in order, cut into
chunks) is written to ``backfill.json`` before anything else; each chunk is
embedded and committed as one atomic step of :class:`.index_store.IndexWriter`;
the plan is deleted after the last chunk. A kill at any moment loses at most the
chunk in flight; running the same command again reads the plan, skips the
committed chunks and embeds the others in exactly the same batches, so the
result is bitwise the one an uninterrupted run gives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, IncompatibleModels, InputError
from .index import (
    embed_in_chunks,
    gate_problems,
    load_checks,
    load_for_model,
    read_plan,
    short,
    version_extra,
)
from .index_store import BLOCK_ROWS, PLAN, Gallery, IndexWriter, utc_now

__all__ = [
    "CLASS_SAMPLE",
    "POLICIES",
    "BackfillReport",
    "backfill",
    "class_drift",
    "margins",
    "priority",
]

POLICIES = ("random", "class", "uncertainty")
CLASS_SAMPLE = 32
"""Items per class embedded by NEW to measure how far the class moved (cost: 32 x classes
images, against the whole gallery for the backfill itself)."""
DEFAULT_CHUNK = 4096
"""Items embedded and committed per step: what a kill can lose, and the commit overhead
(one manifest rewrite) amortised over as many vectors."""
PLAN_FORMAT = "compatkit-backfill-plan"
PAUSE_ENV = "COMPATKIT_TEST_BACKFILL_PAUSE"
"""Seconds to sleep after each committed chunk: lets the tests kill a backfill mid-way."""

Vectors = Callable[[np.ndarray], np.ndarray]
"""positions -> (n, dim) float32 vectors of those items."""


# ----------------------------------------------------------------------------- policies


def margins(vectors: Vectors, labels: np.ndarray, rows: int = BLOCK_ROWS) -> np.ndarray:
    """Per item, cos(own class template) - max cos(other class templates) (float64).

    Templates: the normalised mean of each class's unit vectors, as
    :func:`compatkit.retrieval.class_templates`. Two passes over the gallery,
    ``rows`` items at a time. A gallery of one class has no runner-up: margin +inf.
    """
    n = labels.size
    classes = int(labels.max()) + 1
    sums = None
    for a in range(0, n, rows):
        v = torch.from_numpy(vectors(np.arange(a, min(a + rows, n)))).double()
        v = F.normalize(v, dim=1)
        if sums is None:
            sums = torch.zeros(classes, v.shape[1], dtype=torch.float64)
        sums.index_add_(0, torch.from_numpy(labels[a : a + rows]), v)
    present = torch.from_numpy(np.bincount(labels, minlength=classes) > 0)
    templates = F.normalize(sums, dim=1)
    out = np.empty(n)
    for a in range(0, n, rows):
        v = F.normalize(torch.from_numpy(vectors(np.arange(a, min(a + rows, n)))).double(), dim=1)
        s = v @ templates.t()
        s[:, ~present] = -torch.inf
        y = torch.from_numpy(labels[a : a + rows])
        own = s.gather(1, y[:, None]).squeeze(1)
        s.scatter_(1, y[:, None], -torch.inf)
        out[a : a + rows] = (own - s.max(dim=1).values).numpy()
    return out


def class_drift(
    stored: Vectors,
    new: Vectors,
    labels: np.ndarray,
    eligible: np.ndarray,
    seed: int,
    sample: int = CLASS_SAMPLE,
) -> dict[int, float]:
    """Per class with eligible items: 1 - mean cos(stored vector, NEW vector) over a seeded
    sample of up to ``sample`` of its eligible items."""
    rng = np.random.default_rng([seed, 1])
    picks = []
    for c in np.unique(labels[eligible]):
        mine = eligible[labels[eligible] == c]
        picks.append(np.sort(rng.choice(mine, size=min(sample, mine.size), replace=False)))
    pos = np.concatenate(picks)
    cos = (
        (
            F.normalize(torch.from_numpy(stored(pos)).double(), dim=1)
            * F.normalize(torch.from_numpy(new(pos)).double(), dim=1)
        )
        .sum(dim=1)
        .numpy()
    )
    drift: dict[int, float] = {}
    for c in np.unique(labels[pos]):
        drift[int(c)] = float(1.0 - cos[labels[pos] == c].mean())
    return drift


def priority(
    policy: str,
    eligible: np.ndarray,
    seed: int,
    count: int,
    labels: np.ndarray | None = None,
    stored: Vectors | None = None,
    new: Vectors | None = None,
) -> tuple[np.ndarray, dict]:
    """The eligible item positions in the policy's order, and what decided it (JSON-able).

    ``count``: items in the gallery; ``stored``: the gallery's current vectors (uncertainty,
    class); ``new``: NEW's vectors of a few items (class). The random order is one seeded
    permutation of all ``count`` items, restricted to the eligible ones: backfilling to 20 %
    and then to 40 % picks the same items as backfilling to 40 % at once.
    """
    eligible = np.sort(np.asarray(eligible, dtype=np.int64))
    if policy == "random":
        perm = np.random.default_rng([seed, 0]).permutation(count)
        return perm[np.isin(perm, eligible)], {}
    if policy not in POLICIES:
        raise InputError(f"--policy {policy!r}: use one of {list(POLICIES)}")
    if labels is None:
        raise InputError(f"--policy {policy}: the index has no class labels; use --policy random")
    if eligible.size == 0:
        return eligible, {}
    if policy == "uncertainty":
        m = margins(stored, labels)[eligible]
        order = np.lexsort((eligible, m))  # margin ascending, then position
        return eligible[order], {"margin_quantiles": _quantiles(m)}
    drift = class_drift(stored, new, labels, eligible, seed)
    ranked = sorted(drift, key=lambda c: (-drift[c], c))
    rng = np.random.default_rng([seed, 2])
    parts = []
    for c in ranked:
        mine = eligible[labels[eligible] == c]
        parts.append(mine[rng.permutation(mine.size)])
    return np.concatenate(parts), {
        "class_order": ranked,
        "drift": {str(c): drift[c] for c in ranked},
    }


def _quantiles(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(x, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {k: float(v) for k, v in zip(("min", "p10", "median", "p90", "max"), q, strict=True)}


# ----------------------------------------------------------------------------- the backfill


@dataclass
class BackfillReport:
    """What a backfill call did (also the JSON of ``--json``)."""

    index: str
    model: str
    fingerprint: str
    policy: str
    fraction: float
    target: int
    count: int
    embedded: int = 0
    """Items this call embedded (a resumed run counts only its own)."""
    resumed_chunks: int = 0
    """Chunks found already committed by an earlier, interrupted run."""
    chunks: int = 0
    new_fraction: float = 0.0
    warnings: list[str] = field(default_factory=list)
    plan: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _check_fraction(fraction: float) -> float:
    f = float(fraction)
    if not 0.0 <= f <= 1.0:
        raise InputError(f"--fraction {fraction}: must lie in [0, 1]")
    return f


def _verify_source(gallery: Gallery, data, ids: list[str], where: str) -> None:
    """The images read again must be the gallery's items, in order, with their classes."""
    if len(ids) != gallery.count:
        raise DataError(
            f"data {where}: {len(ids)} images but index {gallery.root} holds {gallery.count} "
            "items; the data changed since the build (pass --data with the original images)"
        )
    bad = next((i for i, (a, b) in enumerate(zip(ids, gallery.ids, strict=True)) if a != b), None)
    if bad is not None:
        raise DataError(
            f"data {where}: item {bad} is {ids[bad]!r} but the index has {gallery.ids[bad]!r}; "
            "the data changed since the build"
        )
    if gallery.labels is not None:
        names = [data.classes[int(y)] for y in data.labels]
        for i, (name, y) in enumerate(zip(names, gallery.labels, strict=True)):
            if name != gallery.classes[y]:
                raise DataError(
                    f"data {where}: item {ids[i]!r} is now class {name!r}, the index says "
                    f"{gallery.classes[y]!r}"
                )


def source_images(gallery: Gallery, emb, data: str | None = None):
    """The gallery's images, read again (from ``data`` or the source the build recorded)
    at ``emb``'s input size, checked against the index's ids and classes."""
    src = gallery.manifest["source"]
    spec = data or src.get("data")
    if not spec:
        raise InputError(f"index {gallery.root} records no source data; pass --data")
    images, ids = load_for_model(emb, spec, None if data else src.get("split"))
    _verify_source(gallery, images, ids, spec)
    return images


def _plan_matches(plan: Mapping, want: Mapping) -> bool:
    return all(plan.get(k) == v for k, v in want.items())


@dataclass
class _Job:
    """What one backfill call works with (to keep its steps short)."""

    w: IndexWriter
    emb: Any
    data: str | None
    batch_size: int
    device: str | None
    say: Callable[[str], None]
    images: Any = None

    def source(self):
        """The gallery's images at NEW's input size, read on first use."""
        if self.images is None:
            self.images = source_images(self.w.gallery, self.emb, self.data)
        return self.images

    def embed(self, pos: np.ndarray) -> np.ndarray:
        return next(
            embed_in_chunks(self.emb, self.source(), pos, pos.size, self.batch_size, self.device)
        )[1]


def _pending_plan(job: _Job, want: dict, replan: bool) -> dict | None:
    """The unfinished plan of the same backfill, or None; another backfill's is refused."""
    path = job.w.root / PLAN
    plan = read_plan(path) if path.is_file() else None
    if plan is None or _plan_matches(plan, want):
        return plan
    if not replan:
        raise InputError(
            f"index {job.w.root} has an unfinished backfill (model "
            f"{short(plan.get('new', ''))}, policy {plan.get('policy')}, fraction "
            f"{plan.get('fraction')}, seed {plan.get('seed')}, chunk {plan.get('chunk')}): "
            "rerun that command to finish it, or pass --replan to plan again from the index "
            "as it is"
        )
    job.say("discarding the unfinished backfill plan (--replan)")
    job.w.remove_side(PLAN)
    return None


def _new_plan(job: _Job, want: dict, need: int) -> dict:
    """Order the items not yet embedded by NEW, keep the first ``need``, write the plan."""
    g = job.w.gallery
    version = g.version_index(want["new"])
    eligible = np.flatnonzero(g.version_of != (-1 if version is None else version))
    order, why = priority(
        want["policy"],
        eligible,
        want["seed"],
        g.count,
        g.labels,
        stored=g.vectors,
        # rounded as the index stores vectors: the curve, which plans on stored values,
        # then plans the same
        new=lambda p: job.embed(p).astype(g.dtype).astype(np.float32),
    )
    plan = {
        **want,
        "model": job.emb.path,
        "created": utc_now(),
        "decided": why,
        "order": order[:need].tolist(),
    }
    job.w.write_side(PLAN, plan)
    return plan


def _run_plan(job: _Job, plan: dict, rep: BackfillReport) -> None:
    """Embed and commit the plan's chunks that are not committed yet, then drop the plan."""
    w, emb = job.w, job.emb
    order = np.asarray(plan["order"], dtype=np.int64)
    chunk = plan["chunk"]
    chunks = [np.sort(order[a : a + chunk]) for a in range(0, order.size, chunk)]
    rep.chunks = len(chunks)
    version = w.add_version(emb.fingerprint, emb.contract, emb.path, version_extra(emb))
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    n = w.gallery.count
    for i, pos in enumerate(chunks):
        if np.all(w.gallery.version_of[pos] == version):
            rep.resumed_chunks += 1
            continue
        w.write_vectors(pos, job.embed(pos), version)
        rep.embedded += pos.size
        done = int((w.gallery.version_of == version).sum())
        job.say(
            f"chunk {i + 1}/{len(chunks)} committed: {done}/{n} items "
            f"({100.0 * done / n:.1f}%) embedded by {short(emb.fingerprint)}"
        )
        if pause:
            time.sleep(pause)
    w.remove_side(PLAN)


def backfill(
    index: str | os.PathLike,
    model: str | os.PathLike,
    fraction: float,
    policy: str = "random",
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
    data: str | None = None,
    replan: bool = False,
    batch_size: int = 256,
    device: str | None = "cpu",
    log: Callable[[str], None] | None = None,
) -> BackfillReport:
    """Bring the fraction of the gallery embedded by ``model`` up to ``fraction``.

    See the module docstring for the policies, the plan and the resume. ``replan``
    discards an unfinished plan made with other arguments (the vectors it committed
    stay: every committed chunk is a valid state of the index).
    """
    from .embed import load_embedder

    t0 = time.perf_counter()
    fraction = _check_fraction(fraction)
    if policy not in POLICIES:
        raise InputError(f"--policy {policy!r}: use one of {list(POLICIES)}")
    if chunk < 1:
        raise InputError(f"--chunk {chunk}: must be a positive number of items")
    emb = load_embedder(model)
    with IndexWriter(index) as w:
        g = w.gallery
        if emb.feat_dim != g.dim:
            raise IncompatibleModels(
                f"model {model} makes {emb.feat_dim}-dimensional features but index {index} "
                f"holds {g.dim}-dimensional vectors; build a new index instead"
            )
        job = _Job(w, emb, data, batch_size, device, log or (lambda _msg: None))
        want = {
            "format": PLAN_FORMAT,
            "new": emb.fingerprint,
            "policy": policy,
            "fraction": fraction,
            "seed": int(seed),
            "chunk": int(chunk),
        }
        rep = BackfillReport(
            str(index),
            str(model),
            emb.fingerprint,
            policy,
            fraction,
            round(fraction * g.count),
            g.count,
        )
        rep.warnings = gate_problems(g, emb.fingerprint, emb.contract, load_checks(index))
        plan = _pending_plan(job, want, replan)
        if plan is None:
            version = g.version_index(emb.fingerprint)
            have = 0 if version is None else int((g.version_of == version).sum())
            if rep.target <= have:
                job.say(f"nothing to do: {have}/{g.count} items already embedded by this model")
            else:
                plan = _new_plan(job, want, rep.target - have)
        if plan is not None:
            rep.plan = {k: v for k, v in plan.items() if k != "order"}
            _run_plan(job, plan, rep)
        version = w.gallery.version_index(emb.fingerprint)
        rep.new_fraction = (
            0.0 if version is None else float((w.gallery.version_of == version).mean())
        )
    rep.seconds = time.perf_counter() - t0
    return rep
