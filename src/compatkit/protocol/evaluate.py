"""Evaluation: features extracted once per model, then the T x T matrix by matrix algebra.

Each model's query and gallery features are computed one time (large batches, no grad,
autocast on CUDA) and cached on disk next to its checkpoint, keyed by the checkpoint's
SHA-256, so a second ``compatkit eval`` extracts nothing; the compatibility matrix is then
pure algebra on those features (a pairwise re-extraction would cost T(T+1)/2 passes).

The metric of the paper: 1:N search accuracy of each query against per-class templates of
the gallery (mean of L2-normalised features, re-normalised), by cosine. Full-gallery
recall@1 and mAP are reported too, and the local learner's own classification accuracy on
the classes it has seen (how much it learned, beside how compatible it stayed).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import __version__
from ..checkpoint import (
    CheckpointError,
    atomic_torch_save,
    file_sha256,
    load_checkpoint,
    read_contract,
)
from ..data import ImageSet
from ..methods import METHODS, load_all
from ..metrics import compatibility_report
from ..retrieval import cross_model_matrix
from ..runtime.device import Runtime
from ..runtime.distributed import gather_rows, shard_slice
from ..runtime.files import atomic_write_json, read_json

if TYPE_CHECKING:
    from .experiment import Experiment

__all__ = [
    "EvalSet",
    "batches_accuracy",
    "cached_local_accuracy",
    "evaluate_experiment",
    "evaluate_sequence",
    "extract_features",
    "feature_cache_file",
    "features_for",
    "local_accuracy",
    "summarize",
    "task_contract",
]


@dataclass
class EvalSet:
    """The images a sequence is evaluated on, on the evaluation device.

    ``query`` and ``gallery``: the open-set retrieval sets; ``local_test`` (or None): unused
    test images of the local classes; ``seen[t]``: the local classes seen after task t.
    """

    query: ImageSet
    gallery: ImageSet
    local_test: ImageSet | None = None
    seen: list[list[int]] | None = None


@torch.no_grad()
def extract_features(
    model: torch.nn.Module, data: ImageSet, rt: Runtime, batch_size: int
) -> torch.Tensor:
    """``(N, d)`` float32 retrieval features (junction output) of ``data``, in order.

    Under ``torchrun`` each rank extracts its contiguous shard and the shards are gathered.
    """
    model.eval()
    device = next(model.parameters()).device
    images = data.images[shard_slice(len(data), rt.dist)]
    out = []
    for i in range(0, len(images), batch_size):
        x = rt.normalize(images[i : i + batch_size].to(device, non_blocking=True))
        with rt.autocast():
            f = model.features(x)
        out.append(f.float())
    feats = torch.cat(out) if out else torch.zeros(0, model.spec.feat_dim, device=device)
    return gather_rows(feats, rt.dist)


def task_contract(cfg: Any, method: str) -> dict[str, Any]:
    """Contract values every task checkpoint of ``method`` in a run of ``cfg`` must hold.

    ``load_checkpoint(path, expect=...)`` refuses a file that differs (a checkpoint of a run
    with another K, head or feature size copied into this one) with a message naming it,
    before any feature is extracted or compared. A learnable head carries no K that matters
    (its rows grow, and a fresh head at a replacement starts empty), and without a junction
    its feature size is the backbone's, which a provider may change: only what is fixed for
    the whole run is expected.
    """
    load_all()
    head = METHODS[method].head
    m = cfg.model
    expect: dict[str, Any] = {"head": head}
    if head != "learnable":
        expect["num_classes"] = m.num_classes
    if head != "learnable" or m.learnable_feature == "junction":
        expect["feat_dim"] = m.feat_dim if m.feat_dim is not None else m.num_classes - 1
    return expect


def feature_cache_file(cache_dir: Path, ckpt: Path) -> Path:
    """Where the query and gallery features of ``ckpt`` are cached in ``cache_dir``."""
    return Path(cache_dir) / f"{Path(ckpt).stem}.features.pt"


def features_for(
    ckpt: Path,
    ev: EvalSet,
    rt: Runtime,
    batch_size: int,
    cache_dir: Path | None,
    expect: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Query and gallery features of one checkpoint, from the cache when it is still valid.

    ``expect``: contract values the checkpoint must hold (see :func:`task_contract`).
    Returns ``(query_features, gallery_features, from_cache)``.
    """
    rt.dist.barrier()  # every rank sees the cache in the same state
    sha = file_sha256(ckpt)
    key = {"sha256": sha, "query": len(ev.query), "gallery": len(ev.gallery)}
    cache = feature_cache_file(cache_dir, ckpt) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            c = torch.load(cache, weights_only=True, map_location="cpu")
            dim = (expect or {}).get("feat_dim", c["query_features"].shape[1])
            if all(c.get(k) == v for k, v in key.items()) and c["query_features"].shape[1] == dim:
                return c["query_features"], c["gallery_features"], True
        except Exception:  # a stale or broken cache is recomputed, never trusted
            pass
    model, _ = load_checkpoint(ckpt, expect=expect, map_location=rt.device)
    model.to(rt.device)
    q = extract_features(model, ev.query, rt, batch_size).cpu()
    g = extract_features(model, ev.gallery, rt, batch_size).cpu()
    if cache is not None and rt.dist.main:
        payload = {
            **key,
            "query_features": q,
            "gallery_features": g,
            "query_labels": ev.query.labels.cpu(),
            "gallery_labels": ev.gallery.labels.cpu(),
        }
        atomic_torch_save(payload, cache)
    return q, g, False


@torch.no_grad()
def local_accuracy(
    model: torch.nn.Module, data: ImageSet, seen: list[int], rt: Runtime, batch_size: int
) -> float | None:
    """Classification accuracy (%) on test images of the local classes seen so far.

    The prediction is the arg-max over the head rows of those classes (a task-agnostic
    classifier over every class learned so far): how much the local learner learned,
    the plasticity side of the compatibility/plasticity trade-off.
    """
    keep = torch.isin(data.labels, torch.tensor(seen, dtype=data.labels.dtype))
    if not bool(keep.any()):
        model.eval()
        return None
    sub = data.subset(torch.nonzero(keep).flatten())
    chunks = (
        (sub.images[i : i + batch_size], sub.labels[i : i + batch_size])
        for i in range(0, len(sub), batch_size)
    )
    return batches_accuracy(model, chunks, seen, rt)


def batches_accuracy(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    seen: list[int],
    rt: Runtime,
) -> float | None:
    """:func:`local_accuracy` over ``(uint8 images, labels)`` batches whose labels are all in
    ``seen`` (images read from files as well as held in memory); None for no image."""
    model.eval()
    device = next(model.parameters()).device
    rows = model.targets(torch.tensor(sorted(seen))).to(device)
    correct = total = 0
    for images, labels in batches:
        x = rt.normalize(images.to(device))
        with rt.autocast():
            logits = model(x).logits.float()
        pred = rows[logits[:, rows].argmax(dim=1)]
        correct += int((pred == model.targets(labels).to(device)).sum())
        total += len(labels)
    return 100.0 * correct / total if total else None


def cached_local_accuracy(
    ckpt: Path,
    data: ImageSet,
    seen: list[int],
    rt: Runtime,
    batch_size: int,
    cache_dir: Path | None,
    start: bool = False,
    keep_provider_rows: bool = False,
) -> float | None:
    """Local accuracy of a checkpoint, cached next to the features by checkpoint hash.

    ``start``: the checkpoint is the model a task *started* from (a provider at a
    replacement, else the previous task's model), evaluated on the classes of that task; a
    fixed head gets the rows of classes it has not seen yet (their vertices are fixed, so
    this is the model the task really began with). A learnable head would get fresh random
    rows, whose accuracy says nothing: None.
    """
    sha = file_sha256(ckpt)
    key = {"sha256": sha, "n": len(data), "seen": sorted(seen)}
    key["keep_provider_rows"] = keep_provider_rows
    # The start model of each task is evaluated on that task's classes: one cache file per
    # class set, named by a digest (a CIFAR-100 task sees up to 100 classes: a file name
    # listing them is too long for the file system); the key inside checks the set itself.
    classes = ",".join(str(c) for c in sorted(seen)).encode()
    suffix = f"start-{hashlib.sha256(classes).hexdigest()[:16]}.local" if start else "local"
    cache = cache_dir / f"{ckpt.stem}.{suffix}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            c = read_json(cache)
            if isinstance(c, dict) and all(c.get(k) == v for k, v in key.items()):
                return c["accuracy"]
        except (ValueError, KeyError):  # a stale or broken cache is recomputed
            pass
    model, _ = load_checkpoint(ckpt, map_location=rt.device)
    if start:
        if not model.head.fixed:
            return None
        model.add_classes(seen, "local", keep_provider_rows)  # as the task did
    else:
        lacking = sorted(set(seen) - set(model.class_map.local))
        if lacking:
            raise CheckpointError(
                f"checkpoint {ckpt}: has no head row for local classes {lacking} of its task "
                f"(it was trained on {sorted(model.class_map.local)}): the checkpoint of another "
                "task?"
            )
    acc = local_accuracy(model.to(rt.device), data, seen, rt, batch_size)
    if cache is not None and rt.dist.main:
        atomic_write_json(cache, {**key, "accuracy": acc})
    return acc


def _tri(m: np.ndarray) -> list[list[float]]:
    return [[round(float(m[i, j]), 4) for j in range(i + 1)] for i in range(m.shape[0])]


def evaluate_sequence(
    ckpts: list[Path],
    ev: EvalSet,
    rt: Runtime,
    *,
    batch_size: int,
    cache_dir: Path | None,
    full_gallery: bool = True,
    starts: list[Path | None] | None = None,
    keep_provider_rows: bool = False,
    progress: Callable[[str], None] | None = None,
    expect: dict[str, Any] | None = None,
) -> tuple[dict, int]:
    """Matrices and metrics of one method and seed; returns ``(result dict, extractions done)``.

    With ``ev.local_test`` and ``ev.seen``, the result also holds the local-class accuracy of
    every task model; with ``starts`` (the checkpoint each task started from), the accuracy of
    those starting models on the same classes and the mean gain of the tasks over them
    (fixed heads only: see :func:`cached_local_accuracy`). ``progress`` is called after each
    model's features (and each local-accuracy pass) with a short note such as
    ``"task 3/5: features"`` (tasks numbered from 1). ``expect``: contract values every
    checkpoint must hold (see :func:`task_contract`).
    """
    qf, gf, fresh = [], [], 0
    n = len(ckpts)
    for t, c in enumerate(ckpts):
        q, g, cached = features_for(c, ev, rt, batch_size, cache_dir, expect)
        qf.append(q.to(rt.device))
        gf.append(g.to(rt.device))
        fresh += not cached
        if progress is not None:
            progress(f"task {t + 1}/{n}: features{' (cached)' if cached else ''}")
    ql, gl = ev.query.labels.to(rt.device), ev.gallery.labels.to(rt.device)
    m = cross_model_matrix(qf, gf, ql, gl, metric="template")
    rep = compatibility_report(m).to_dict()
    res = {"matrix": _tri(m), **rep, "final_self": round(float(m[-1, -1]), 4)}
    if ev.local_test is not None and ev.seen is not None:
        accs = []
        for t, c in enumerate(ckpts):
            accs.append(
                cached_local_accuracy(c, ev.local_test, ev.seen[t], rt, batch_size, cache_dir)
            )
            if progress is not None:
                progress(f"task {t + 1}/{n}: local accuracy")
        res["local_accuracy"] = [None if a is None else round(a, 4) for a in accs]
        res["local_final"] = res["local_accuracy"][-1]
        known = [a for a in res["local_accuracy"] if a is not None]
        res["local_mean"] = round(statistics.fmean(known), 4) if known else None
        if starts is not None:
            begun = [
                None
                if c is None or not c.is_file()  # e.g. providers not copied with the run
                else cached_local_accuracy(
                    c, ev.local_test, ev.seen[t], rt, batch_size, cache_dir,
                    start=True, keep_provider_rows=keep_provider_rows,
                )
                for t, c in enumerate(starts)
            ]  # fmt: skip
            res["local_start"] = [None if a is None else round(a, 4) for a in begun]
            gains = [a - b for a, b in zip(accs, begun, strict=True) if None not in (a, b)]
            res["local_gain"] = round(statistics.fmean(gains), 4) if gains else None
    if full_gallery:
        res["recall1_matrix"] = _tri(cross_model_matrix(qf, gf, ql, gl, metric="recall@1"))
        res["map_matrix"] = _tri(cross_model_matrix(qf, gf, ql, gl, metric="mAP"))
    return res, fresh


def evaluate_experiment(exp: Experiment, methods: list[str] | None = None) -> dict:
    """Every method's matrices and metrics, from the run's checkpoints (``metrics.json``)."""
    cfg, plan, log = exp.cfg, exp.plan, exp.log
    rt = exp.eval_runtime
    device = rt.device
    ev = EvalSet(
        plan.query.to(device),
        plan.gallery.to(device),
        plan.local_test.to(device) if plan.local_test is not None else None,
        [
            [c for i in range(t + 1) for c in plan.scenario[i].classes]
            for t in range(plan.num_tasks)
        ],
    )
    results: dict = {}
    extractions = 0
    t0 = time.perf_counter()
    segs = plan.segments(cfg)
    firsts = {t for t in range(plan.num_tasks) if t == 0 or segs[t] != segs[t - 1]}
    for m in methods or cfg.methods:
        runs = []
        for seed in cfg.seeds:
            ckpts = exp.dirs.tasks(m, seed, plan.num_tasks)
            missing = [p.name for p in ckpts if not p.is_file()]
            if missing:
                raise CheckpointError(
                    f"{m} seed {seed}: missing checkpoints {missing} in "
                    f"{exp.dirs.seed(m, seed)}; finish the run with "
                    f"compatkit run --out {exp.dirs.root} --resume"
                )
            for t, c in enumerate(ckpts):
                exp.check_task_checkpoint(read_contract(c), m, seed, t)
            starts = [
                exp.providers.path(segs[t], METHODS[m].head) if t in firsts else ckpts[t - 1]
                for t in range(plan.num_tasks)
            ]
            log.start(
                f"evaluating {m} seed {seed}", len(ckpts) * (2 if ev.local_test is not None else 1)
            )
            try:
                res, n = evaluate_sequence(
                    ckpts,
                    ev,
                    rt,
                    batch_size=cfg.eval.batch_size,
                    cache_dir=exp.dirs.features(m, seed),
                    full_gallery=cfg.eval.full_gallery,
                    starts=starts,
                    keep_provider_rows=cfg.local.keep_provider_rows,
                    progress=log.advance,
                    expect=task_contract(cfg, m),
                )
            finally:
                log.finish()
            extractions += n
            runs.append({"seed": seed, **res})
            log.info(
                f"{m} seed {seed}: AC {res['AC']:.2f}  AM {res['AM']:.2f}  "
                f"final self-test {res['final_self']:.2f}"
            )
        results[m] = {**runs[0], "seeds": list(cfg.seeds), "runs": runs, "summary": summarize(runs)}
    results["_meta"] = {
        "seeds": list(cfg.seeds),
        "num_tasks": plan.num_tasks,
        "replacement_tasks": [0] + ([] if cfg.no_replacement else sorted(cfg.replacement_tasks)),
        "methods": list(methods or cfg.methods),
        "dataset": cfg.local.data.dataset,
        "class_order": plan.class_order,
        "tasks": [list(plan.scenario[t].classes) for t in range(plan.num_tasks)],
        "query_images": len(plan.query),
        "gallery_images": len(plan.gallery),
        "local_test_images": len(plan.local_test) if plan.local_test is not None else 0,
        "no_replacement": cfg.no_replacement,
        "compatkit_version": __version__,
        "device": str(device),
        "precision": rt.precision.name,
        "feature_extractions": extractions,
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }
    return results


def summarize(runs: list[dict]) -> dict:
    """Mean, sample standard deviation and values over seeds of the scalar metrics."""
    out = {}
    for k in ("AC", "AM", "BC", "FC", "final_self", "local_final", "local_mean", "local_gain"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        if not vals:
            out[k] = {"mean": None, "std": None, "values": []}
            continue
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out[k] = {"mean": statistics.fmean(vals), "std": std, "values": vals}
    return out
