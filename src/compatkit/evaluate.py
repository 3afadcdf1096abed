"""Evaluation: features extracted once per model, then the T x T matrix by matrix algebra.

The reference implementation re-extracts the gallery for every (query model,
gallery model) pair, T(T+1)/2 extractions; here each model's query and gallery
features are computed one time (large batches, no grad, autocast on CUDA) and
cached on disk next to its checkpoint, keyed by the checkpoint's SHA-256, so a
second ``compatkit eval`` extracts nothing (DESIGN.md principle 4).

Metric of the paper (METHOD.md Sec. 4): 1:N search accuracy of each query
against per-class templates of the gallery (mean of L2-normalised features,
re-normalised), by cosine. Full-gallery recall@1 and mAP are reported too.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import file_sha256, load_checkpoint
from .data import ImageSet
from .distributed import Dist, gather_rows, shard_slice
from .errors import CheckpointError
from .metrics import compatibility_report
from .retrieval import cross_model_matrix
from .train import Precision, autocast

__all__ = [
    "evaluate_sequence",
    "extract_features",
    "features_for",
    "local_accuracy",
    "summarize",
]


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    data: ImageSet,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    precision: Precision,
    dist: Dist | None = None,
) -> torch.Tensor:
    """``(N, d)`` float32 retrieval features (junction output) of ``data``, in order.

    Under ``torchrun`` each rank extracts its contiguous shard and the shards are gathered.
    """
    model.eval()
    d = dist or Dist()
    device = next(model.parameters()).device
    images = data.images[shard_slice(len(data), d)]
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device, non_blocking=True))
        with autocast(device, precision):
            f = model.features(x)
        out.append(f.float())
    feats = torch.cat(out) if out else torch.zeros(0, model.spec.feat_dim, device=device)
    return gather_rows(feats, d)


def task_contract(cfg: Any, method: str) -> dict[str, Any]:
    """Contract values every task checkpoint of ``method`` in a run of ``cfg`` must hold.

    ``load_checkpoint(path, expect=...)`` refuses a file that differs (a checkpoint of a run
    with another K, head or feature size copied into this one) with a message naming it,
    before any feature is extracted or compared. A learnable head carries no K that matters
    (its rows grow, and a fresh head at a replacement starts empty), and without a junction
    its feature size is the backbone's, which a provider may change: only what is fixed for
    the whole run is expected.
    """
    from .methods import METHODS, load_all

    load_all()
    head = METHODS[method].head
    m = cfg.model
    expect: dict[str, Any] = {"head": head}
    if head != "learnable":
        expect["num_classes"] = m.num_classes
    if head != "learnable" or m.learnable_feature == "junction":
        expect["feat_dim"] = m.feat_dim if m.feat_dim is not None else m.num_classes - 1
    return expect


def features_for(
    ckpt: Path,
    query: ImageSet,
    gallery: ImageSet,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    precision: Precision,
    device: torch.device,
    cache_dir: Path | None,
    dist: Dist | None = None,
    expect: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Query and gallery features of one checkpoint, from the cache when it is still valid.

    ``expect``: contract values the checkpoint must hold (see :func:`task_contract`).
    Returns ``(query_features, gallery_features, from_cache)``.
    """
    d = dist or Dist()
    d.barrier()  # every rank sees the cache in the same state
    sha = file_sha256(ckpt)
    key = {"sha256": sha, "query": len(query), "gallery": len(gallery)}
    cache = cache_dir / f"{ckpt.stem}.features.pt" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        try:
            c = torch.load(cache, weights_only=True, map_location="cpu")
            dim = (expect or {}).get("feat_dim", c["query_features"].shape[1])
            if all(c.get(k) == v for k, v in key.items()) and c["query_features"].shape[1] == dim:
                return c["query_features"], c["gallery_features"], True
        except Exception:  # a stale or broken cache is recomputed, never trusted
            pass
    model, _ = load_checkpoint(ckpt, expect=expect, map_location=device)
    model.to(device)
    q = extract_features(model, query, normalize, batch_size, precision, d).cpu()
    g = extract_features(model, gallery, normalize, batch_size, precision, d).cpu()
    if cache is not None and d.main:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(
            {
                **key,
                "query_features": q,
                "gallery_features": g,
                "query_labels": query.labels.cpu(),
                "gallery_labels": gallery.labels.cpu(),
            },
            tmp,
        )
        tmp.replace(cache)
    return q, g, False


@torch.no_grad()
def local_accuracy(
    model: torch.nn.Module,
    data: ImageSet,
    seen: list[int],
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    precision: Precision,
) -> float | None:
    """Classification accuracy (%) on test images of the local classes seen so far.

    The prediction is the arg-max over the head rows of those classes (a task-agnostic
    classifier over every class learned so far): how much the local learner learned,
    the plasticity side of the compatibility/plasticity trade-off.
    """
    model.eval()
    device = next(model.parameters()).device
    keep = torch.isin(data.labels, torch.tensor(seen, dtype=data.labels.dtype))
    if not bool(keep.any()):
        return None
    sub = data.subset(torch.nonzero(keep).flatten())
    rows = model.targets(torch.tensor(sorted(seen))).to(device)
    correct = 0
    for i in range(0, len(sub), batch_size):
        x = normalize(sub.images[i : i + batch_size].to(device))
        with autocast(device, precision):
            logits = model(x).logits.float()
        pred = rows[logits[:, rows].argmax(dim=1)]
        correct += int((pred == model.targets(sub.labels[i : i + batch_size]).to(device)).sum())
    return 100.0 * correct / len(sub)


def _local_accuracy_cached(
    ckpt: Path,
    data: ImageSet,
    seen: list[int],
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    precision: Precision,
    device: torch.device,
    cache_dir: Path | None,
    write: bool,
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
    import json

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
            c = json.loads(cache.read_text())
            if all(c.get(k) == v for k, v in key.items()):
                return c["accuracy"]
        except (ValueError, OSError):
            pass
    model, _ = load_checkpoint(ckpt, map_location=device)
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
    acc = local_accuracy(model.to(device), data, seen, normalize, batch_size, precision)
    if cache is not None and write:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({**key, "accuracy": acc}))
        tmp.replace(cache)
    return acc


def _tri(m: np.ndarray) -> list[list[float]]:
    return [[round(float(m[i, j]), 4) for j in range(i + 1)] for i in range(m.shape[0])]


def evaluate_sequence(
    ckpts: list[Path],
    query: ImageSet,
    gallery: ImageSet,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    precision: Precision,
    device: torch.device,
    cache_dir: Path | None,
    full_gallery: bool = True,
    dist: Dist | None = None,
    local_test: ImageSet | None = None,
    seen: list[list[int]] | None = None,
    starts: list[Path | None] | None = None,
    keep_provider_rows: bool = False,
    progress: Callable[[str], None] | None = None,
    expect: dict[str, Any] | None = None,
) -> tuple[dict, int]:
    """Matrices and metrics of one method/seed; returns (result dict, extractions done).

    With ``local_test`` and ``seen`` (the local classes seen after each task), the result
    also holds the local-class accuracy of every task model; with ``starts`` (the checkpoint
    each task started from), the accuracy of those starting models on the same classes and
    the mean gain of the tasks over them (fixed heads only: see ``_local_accuracy_cached``).
    ``progress`` is called after each model's features (and each local-accuracy pass)
    with a short note such as ``"task 3/5: features"`` (tasks numbered from 1).
    ``expect``: contract values every checkpoint must hold (see :func:`task_contract`).
    """
    qf, gf, fresh = [], [], 0
    n = len(ckpts)
    for t, c in enumerate(ckpts):
        q, g, cached = features_for(
            c, query, gallery, normalize, batch_size, precision, device, cache_dir, dist, expect
        )
        qf.append(q.to(device))
        gf.append(g.to(device))
        fresh += not cached
        if progress is not None:
            progress(f"task {t + 1}/{n}: features{' (cached)' if cached else ''}")
    ql, gl = query.labels.to(device), gallery.labels.to(device)
    m = cross_model_matrix(qf, gf, ql, gl, metric="template")
    rep = compatibility_report(m).to_dict()
    res = {"matrix": _tri(m), **rep, "final_self": round(float(m[-1, -1]), 4)}
    if local_test is not None and seen is not None:
        d = dist or Dist()
        accs = []
        for t, c in enumerate(ckpts):
            accs.append(
                _local_accuracy_cached(
                    c,
                    local_test,
                    seen[t],
                    normalize,
                    batch_size,
                    precision,
                    device,
                    cache_dir,
                    d.main,
                )
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
                else _local_accuracy_cached(
                    c, local_test, seen[t], normalize, batch_size, precision, device, cache_dir,
                    d.main, start=True, keep_provider_rows=keep_provider_rows,
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
