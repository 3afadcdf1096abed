"""Partial backfill: re-embed part of a gallery with the new model, in place, resumably.

When an update is not compatible (or not compatible enough), the way out is to
re-embed the gallery with the new model ("backfilling"); on a large gallery
that takes days, and the service keeps answering meanwhile from a gallery that
holds vectors of both models. Which items to re-embed first decides how good
the answers are during the migration (:mod:`.policies`; :mod:`.curve` measures
it per policy). Both label policies are planned on the gallery as it is when
the command starts, so backfilling to 20 % and then to 40 % re-plans the second
step on the mixed gallery the first one left; the random order does not depend
on the steps.

Checked before anything is written: the arguments, the model's dimension, every
record of the gallery (:mod:`.ledger`), an unfinished plan of another backfill,
and the source images (read again and compared with the gallery's ids and
classes). Then the version and the plan (the items to embed, in order, cut into
chunks) are recorded in one write; each chunk is embedded and upserted by
position (on LanceDB one commit, a new table version); the plan is dropped after
the last chunk. A kill at any moment loses at most the chunk in flight; running
the same command again reads the plan, skips the chunks whose items all carry
the new version, and embeds the others in exactly the same batches, so the
result is the one an uninterrupted run gives, vector for vector. One backfill
at a time per gallery.

Several workers share one backfill (a large gallery on many GPUs or machines): the plan is
recorded first (``plan_only``), then each worker ``i`` of ``n`` embeds the plan's chunks
``i - 1, i - 1 + n, i - 1 + 2n, ...``. The shares are disjoint, so the workers never write
the same item, and interleaved, so the gallery fills in the plan's priority order whatever
the number of workers; each chunk is still one commit (LanceDB resolves concurrent commits
to different rows by itself), a killed worker is restarted with its own command and skips
what it committed, and whichever worker finds every chunk in drops the plan. A run without
``worker`` is the whole share (1 of 1) and finishes whatever the workers left.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError, InputError
from .index import (
    Gallery,
    embed_in_chunks,
    gate_problems,
    load_for_model,
    progress,
    require_dim,
    short,
)
from .ledger import (
    MAX_CHUNK,
    PLAN_FORMAT,
    plan_target,
    read_checks,
    read_plan,
    utc_now,
    version_record,
)
from .policies import CLASS_SAMPLE, POLICIES, VectorSource, class_drift, margins, priority
from .store import DEFAULT_TIMEOUT, Rows, engine_of

__all__ = [
    "CLASS_SAMPLE",
    "MAX_WORKERS",
    "PAUSE_ENV",
    "POLICIES",
    "BackfillReport",
    "backfill",
    "class_drift",
    "margins",
    "parse_worker",
    "priority",
    "refuse_lite_workers",
    "source_images",
    "stored_vectors",
]

DEFAULT_CHUNK = 4096
"""Items embedded and committed per step: what a kill can lose, and the commit overhead
(one table version on LanceDB) amortised over as many vectors."""
MAX_WORKERS = 65536
"""Most workers one backfill is spread over (a bound on hostile input, far above any cluster
that shares one gallery)."""
PAUSE_ENV = "COMPATKIT_TEST_BACKFILL_PAUSE"
"""Seconds to sleep after each committed chunk: lets the tests kill a backfill mid-way."""


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
    """Chunks of the whole plan."""
    worker: str = "1/1"
    """This call's share of the plan: worker ``i/n``."""
    own_chunks: int = 0
    """Chunks of this worker's share."""
    finished: bool = True
    """False while other workers' chunks are still out (the plan stays recorded)."""
    new_fraction: float = 0.0
    warnings: list[str] = field(default_factory=list)
    plan: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def stored_vectors(g: Gallery) -> VectorSource:
    """The gallery's current vectors, read from its engine."""

    def blocks():
        for rows in g.store.scan(("vector",)):
            yield rows.pos, rows.vectors

    return VectorSource(g.vectors, blocks)


def source_images(g: Gallery, emb, data: str | None = None):
    """The gallery's images, read again (from ``data`` or the source the build recorded)
    at ``emb``'s input size, checked against the gallery's ids and classes."""
    src = g.doc["source"]
    spec = data or src.get("data")
    if not spec:
        raise InputError(f"index {g.uri} records no source data; pass --data")
    images, ids = load_for_model(emb, spec, None if data else src.get("split"))
    if len(ids) != g.count:
        raise DataError(
            f"data {spec}: {len(ids)} images but index {g.uri} holds {g.count} items; the data "
            "changed since the build (pass --data with the original images)"
        )
    have = g.column("item_id")
    bad = next((i for i, (a, b) in enumerate(zip(ids, have, strict=True)) if a != b), None)
    if bad is not None:
        raise DataError(
            f"data {spec}: item {bad} is {ids[bad]!r} but the index has {have[bad]!r}; the "
            "data changed since the build"
        )
    labels, classes = g.column("label"), g.classes or []
    for i, y in enumerate(images.labels.tolist()):
        name = images.classes[y]
        if not 0 <= labels[i] < len(classes) or name != classes[labels[i]]:
            raise DataError(
                f"data {spec}: item {ids[i]!r} is now class {name!r}, the index says "
                f"{classes[labels[i]] if 0 <= labels[i] < len(classes) else labels[i]!r}"
            )
    return images


def parse_worker(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``: worker I (counted from 1) of N."""
    a, sep, b = str(text).partition("/")
    try:
        i, n = int(a), int(b)
    except ValueError:
        i = n = 0
    if not sep or not 1 <= n <= MAX_WORKERS or not 1 <= i <= n:
        raise InputError(
            f"--worker {text!r}: write I/N, this worker's number I (1..N) of N workers, "
            f"N at most {MAX_WORKERS} (e.g. --worker 2/4)"
        )
    return i, n


def refuse_lite_workers(index: str | os.PathLike, n: int, option: str) -> None:
    """Refuse ``n`` > 1 workers on a Milvus Lite file, which serves one process at a time."""
    if n > 1 and engine_of(str(index)) == "milvus-lite":
        raise InputError(
            f"{option}: Milvus Lite ({index}) serves one process at a time; spread a "
            "backfill over workers on LanceDB or a Milvus server"
        )


def _check_args(fraction: float, policy: str, chunk: int) -> None:
    if policy not in POLICIES:
        raise InputError(f"--policy {policy!r}: use one of {list(POLICIES)}")
    if not 1 <= chunk <= MAX_CHUNK:
        raise InputError(f"--chunk {chunk}: must be a number of items in 1..{MAX_CHUNK}")
    plan_target(fraction, 1)


def _new_plan(g: Gallery, emb, embed, want: dict, need: int) -> dict:
    """Order the items not yet embedded by NEW and keep the first ``need``."""
    versions = g.column("version")
    fp = want["new"]
    eligible = np.array([i for i, v in enumerate(versions) if v != fp], dtype=np.int64)
    order, why = priority(
        want["policy"],
        eligible,
        want["seed"],
        g.count,
        g.column("label"),
        stored=stored_vectors(g),
        # rounded as the gallery stores vectors: the curve, which plans on stored values,
        # then plans the same
        new=lambda p: embed(p).astype(g.store.dtype).astype(np.float32),
    )
    return {
        **want,
        "model": emb.path,
        "created": utc_now(),
        "had": g.count - int(eligible.size),
        "decided": why,
        "order": order[:need].tolist(),
    }


def _run_plan(
    g: Gallery, emb, embed, plan: dict, rep: BackfillReport, say, share: tuple[int, int]
) -> None:
    """Embed and upsert the chunks of this worker's share that are not done yet; drop the
    plan when every chunk of it is in."""
    order = np.asarray(plan["order"], dtype=np.int64)
    chunk = plan["chunk"]
    chunks = [np.sort(order[a : a + chunk]) for a in range(0, order.size, chunk)]
    me, n = share
    mine = range(me - 1, len(chunks), n)
    rep.chunks, rep.own_chunks = len(chunks), len(mine)
    who = f" by worker {me}/{n}" if n > 1 else ""
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    fp = emb.fingerprint
    done = plan["had"] if n == 1 else 0
    share_items = sum(chunks[j].size for j in mine)
    for i in mine:
        pos = chunks[i]
        have = g.store.fetch(pos, ("item_id", "label", "class_name", "version"))
        if all(v == fp for v in have.versions):
            rep.resumed_chunks += 1
            done += pos.size
            continue
        vec = embed(pos)
        g.store.upsert(Rows(pos, vec, have.ids, have.labels, have.classes, [fp] * pos.size))
        rep.embedded += pos.size
        done += pos.size
        if n == 1:
            at = f"{done}/{g.count} items ({100.0 * done / g.count:.1f}%)"
        else:
            at = f"{done}/{share_items} items of this worker's share"
        say(f"chunk {i + 1}/{len(chunks)} committed{who}: {at} embedded by {short(fp)}")
        if pause:
            time.sleep(pause)
    # Each plan item was not NEW's when planned and nothing but this backfill writes NEW's
    # vectors, so the plan is complete exactly when NEW counts ``had`` + the plan's items.
    if n > 1 and g.store.count([fp]) < plan["had"] + order.size:
        rep.finished = False
        say(f"worker {me}/{n} done; the plan stays recorded until every worker's chunks are in")
        return
    g.store.put_records({"plan": None})
    if g.store.index_info() is not None:
        say("updating the vector index")
        try:
            g.store.optimize()
        except (RuntimeError, OSError, ValueError) as e:  # another worker's commit raced it
            rep.warnings.append(
                f"the vector index was not updated ({e}); run: compatkit index optimize {g.uri}"
            )


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
    collection: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    log: Callable[[str], None] | None = None,
    plan_only: bool = False,
    worker: tuple[int, int] | None = None,
) -> BackfillReport:
    """Bring the fraction of the gallery embedded by ``model`` up to ``fraction``.

    See the module docstring. ``replan`` replaces an unfinished plan made with other
    arguments (the vectors it committed stay: every committed chunk is a valid gallery).
    ``plan_only`` records the plan and embeds nothing; ``worker=(i, n)`` embeds worker
    ``i``'s share of a plan recorded before with the same arguments.
    """
    from .embed import load_embedder

    t0 = time.perf_counter()
    say = progress(log)
    _check_args(fraction, policy, chunk)
    share = (1, 1) if worker is None else parse_worker(f"{worker[0]}/{worker[1]}")
    if worker is not None and (replan or plan_only):
        raise InputError(
            "--worker runs a share of a recorded plan: plan (or --replan) first, once, "
            "without --worker"
        )
    refuse_lite_workers(index, share[1], f"--worker {share[0]}/{share[1]}")
    emb = load_embedder(model)
    with Gallery.open(index, collection, timeout) as g:
        require_dim(g, emb.feat_dim, f"model {model}", " (build a new gallery instead)")
        fp = emb.fingerprint
        want = {
            "format": PLAN_FORMAT,
            "new": fp,
            "policy": policy,
            "fraction": float(fraction),
            "seed": int(seed),
            "chunk": int(chunk),
        }
        target = plan_target(fraction, g.count)
        rep = BackfillReport(str(index), str(model), fp, policy, float(fraction), target, g.count)
        rep.worker = f"{share[0]}/{share[1]}"
        rep.warnings = gate_problems(g, fp, emb.contract, read_checks(g.store))
        plan = read_plan(g.store, g.doc, g.versions)
        if plan is not None and any(plan.get(k) != v for k, v in want.items()):
            if not replan:
                raise InputError(
                    f"index {index} has an unfinished backfill (model {short(plan['new'])}, "
                    f"policy {plan['policy']}, fraction {plan['fraction']}, seed "
                    f"{plan['seed']}, chunk {plan['chunk']}): rerun that command to finish "
                    "it, or pass --replan to plan again from the gallery as it is"
                )
            say("replacing the unfinished backfill plan (--replan)")
            plan = None
        images = source_images(g, emb, data)  # checked before anything is written

        def embed(pos: np.ndarray) -> np.ndarray:
            return next(embed_in_chunks(emb, images, pos, pos.size, batch_size, device))[1]

        have = g.counts.get(fp, 0)
        if plan is None and target <= have:
            say(f"nothing to do: {have}/{g.count} items already embedded by this model")
            if read_plan(g.store, g.doc, g.versions) is not None:
                g.store.put_records({"plan": None})
        elif plan is None and worker is not None:
            raise InputError(
                f"index {index} has no backfill plan for these arguments: record it once with "
                "the same command and --plan-only, then start the workers"
            )
        elif plan is None:
            plan = _new_plan(g, emb, embed, want, target - have)
            records: dict = {"plan": plan}
            if g.version(fp) is None:
                records[f"version/{fp}"] = version_record(emb, str(model))
            g.store.put_records(records)
        if plan is not None:
            rep.plan = {k: v for k, v in plan.items() if k != "order"}
            rep.plan["items"] = len(plan["order"])
            if plan_only:
                rep.chunks = -(-len(plan["order"]) // plan["chunk"])
                rep.finished = False
            else:
                _run_plan(g, emb, embed, plan, rep, say, share)
        rep.new_fraction = g.store.count([fp]) / g.count
    rep.seconds = time.perf_counter() - t0
    return rep
