"""The models of a finished run, as the analysis reads them: from the run directory alone.

``config.yaml``, ``metrics.json``, the task checkpoints (class maps, head vertices, logged
training losses) and the feature cache ``compatkit run`` / ``compatkit eval`` leave next to
each checkpoint. A missing or stale cache file is recomputed (and saved) from the checkpoint
and the run's evaluation images, exactly as ``compatkit eval`` would, so an analysis works on
any run whose data is still available; an evaluated run is analysed without reading an image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import file_sha256, load_checkpoint
from ..config import load_config
from ..data import Normalize
from ..errors import CheckpointError, InputError
from ..protocol.evaluate import EvalSet, feature_cache_file, features_for, task_contract
from ..protocol.plan import make_plan
from ..protocol.records import check_identity, read_run_id
from ..report import load_metrics, method_names
from ..runtime.device import Runtime, resolve_device, resolve_precision
from ..runtime.layout import RunDir

__all__ = [
    "FeatureSource",
    "Log",
    "ModelRecord",
    "RunInfo",
    "across_replacement",
    "eval_vertices",
    "load_models",
    "load_run",
    "quiet",
]

Log = Callable[[str], None]


def quiet(_: str) -> None:
    """A log that says nothing."""


# --------------------------------------------------------------------------- the run


@dataclass
class RunInfo:
    """What the analysis needs to know about a run directory before touching a model."""

    run_dir: Path
    cfg: Any
    """The resolved ``RunConfig`` the run wrote (``config.yaml``)."""
    metrics: dict
    """``metrics.json`` as written by ``compatkit run`` / ``compatkit eval``."""
    methods: list[str]
    seeds: list[int]
    num_tasks: int
    replacement_tasks: list[int]
    """Zero-based tasks that start from a provider, task 0 included (as in ``_meta``)."""


def load_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """Read ``config.yaml`` and ``metrics.json`` of a run; refuse anything else, saying why."""

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    cfg_file = RunDir(run_dir).config
    if not cfg_file.is_file():
        raise InputError(f"{run_dir} is not a compatkit run (no config.yaml)")
    if not RunDir(run_dir).metrics.is_file():
        raise InputError(
            f"{run_dir} has no metrics.json: the run did not finish its evaluation; "
            f"run `compatkit eval {run_dir}` first"
        )
    cfg = load_config(cfg_file)
    metrics = load_metrics(run_dir)
    meta = metrics.get("_meta") or {}
    methods = method_names(metrics)
    seeds = [int(s) for s in (meta.get("seeds") or cfg.seeds)]
    num_tasks = int(meta.get("num_tasks") or len(metrics[methods[0]]["matrix"]))
    reps = meta.get("replacement_tasks")
    if reps is None:
        reps = [0] + ([] if cfg.no_replacement else sorted(cfg.replacement_tasks))
    return RunInfo(run_dir, cfg, metrics, methods, seeds, num_tasks, sorted({int(r) for r in reps}))


def across_replacement(k: int, t: int, replacement_tasks: Sequence[int]) -> list[int]:
    """Replacement tasks r with k < r <= t: model t descends from a different provider than k."""
    return [r for r in replacement_tasks if k < r <= t]


def _canon(name: str) -> str:
    return name.lower().replace("_", "-")


def eval_vertices(
    model: Any, labels: torch.Tensor, provider: int | None, cfg: Any
) -> tuple[torch.Tensor | None, str | None, str]:
    """Each evaluation sample's class vertex in ``model``'s head: ``(vertices, space, why)``.

    Evaluation labels are dataset labels. A fixed head gives them a vertex when
    they are classes the model was trained on: the provider's classes (rows
    from the top) when the evaluation images come from the dataset of the
    provider this model descends from, else the local learner's classes (rows
    from the bottom) when they come from the local dataset. Otherwise, and for
    learnable heads (whose rows move), there is no vertex and the angles are
    None; ``why`` says which case applied.
    """
    if not getattr(model.head, "fixed", False):
        return None, None, "learnable head: its rows move, so there is no fixed vertex"
    eval_ds = {_canon(cfg.eval.query.dataset), _canon(cfg.eval.gallery.dataset)}
    present = {int(c) for c in torch.unique(labels).tolist()}
    cm = model.class_map
    prov_ds = None
    if provider is not None and 0 <= provider < len(cfg.providers):
        prov_ds = _canon(cfg.providers[provider].data.dataset)
    if prov_ds is not None and eval_ds == {prov_ds} and present <= set(cm.provider):
        space = "provider"
    elif eval_ds == {_canon(cfg.local.data.dataset)} and present <= set(cm.local):
        space = "local"
    else:
        return None, None, "the evaluation classes have no vertex in this model's head"
    rows = cm.rows(labels.cpu(), space)
    return model.head.weight.detach().float().cpu()[rows], space, f"{space} classes"


# --------------------------------------------------------------------------- models and features


@dataclass
class ModelRecord:
    """One task model of one method and seed: its evaluation features and what it logged."""

    task: int
    path: Path
    query: torch.Tensor
    gallery: torch.Tensor
    query_labels: torch.Tensor
    gallery_labels: torch.Tensor
    head: str
    extra: dict = field(default_factory=dict)
    """The checkpoint's ``extra``: losses, loss_parts, replaced, provider, classes, ..."""
    vertices: torch.Tensor | None = None
    """Vertex of each evaluation sample (query rows then gallery rows), or None."""
    vertex_space: str | None = None
    vertex_note: str = ""


class FeatureSource:
    """Features of a checkpoint: from its cache when valid, else computed (and cached).

    The data plan (which loads the images) is only built when a cache file is
    missing or stale, so analysing an evaluated run reads no image at all.
    """

    def __init__(self, info: RunInfo, log: Log) -> None:
        self.info = info
        self.log = log
        self._rt = None
        self._plan = None

    def _computed(self, ckpt: Path) -> tuple[torch.Tensor, ...]:

        cfg = self.info.cfg
        if self._rt is None:
            self.log(f"feature cache missing or stale for {ckpt}: computing it from the checkpoint")
            self._plan = plan = make_plan(cfg)
            dev = resolve_device(cfg.device)
            norm = Normalize(plan.mean, plan.std)  # the same input scaling as evaluation
            self._rt = Runtime(dev, resolve_precision(cfg.precision, dev), norm)
        plan = self._plan
        ev = EvalSet(plan.query, plan.gallery)
        q, g, _ = features_for(ckpt, ev, self._rt, cfg.eval.batch_size, RunDir.features_of(ckpt))
        return q, g, plan.query.labels.cpu(), plan.gallery.labels.cpu()

    def get(self, ckpt: Path) -> tuple[torch.Tensor, ...]:

        cache = feature_cache_file(RunDir.features_of(ckpt), ckpt)
        if cache.is_file():
            try:
                c = torch.load(cache, weights_only=True, map_location="cpu")
            except Exception:  # a broken cache is recomputed, never trusted
                c = None
            keys = ("query_features", "gallery_features", "query_labels", "gallery_labels")
            if (
                isinstance(c, dict)
                and all(k in c for k in keys)
                and c.get("sha256") == file_sha256(ckpt)
            ):
                return tuple(c[k].cpu() for k in keys)
        return self._computed(ckpt)


def load_models(
    info: RunInfo, method: str, seed: int, source: FeatureSource | None = None, log: Log = quiet
) -> list[ModelRecord]:
    """Features, vertices and logged losses of every task model of ``method`` / ``seed``."""

    source = source or FeatureSource(info, log)
    dirs = RunDir(info.run_dir)
    d = dirs.seed(method, seed)
    paths = dirs.tasks(method, seed, info.num_tasks)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CheckpointError(f"{method} seed {seed}: missing checkpoints {missing} in {d}")
    run_id = read_run_id(info.run_dir)
    out = []
    expect = task_contract(info.cfg, method)
    for t, p in enumerate(paths):
        # The contract first: a checkpoint of another K or feature size is refused by name
        # instead of failing later when its features meet the others'.
        model, meta = load_checkpoint(p, expect=expect, map_location="cpu")
        extra = dict(meta.get("extra") or {})
        check_identity(extra, p, "checkpoint", method=method, seed=seed, task=t, run_id=run_id)
        q, g, ql, gl = source.get(p)
        labels = torch.cat([ql, gl])
        verts, space, note = eval_vertices(model, labels, extra.get("provider"), info.cfg)
        out.append(ModelRecord(t, p, q, g, ql, gl, model.spec.head, extra, verts, space, note))
        del model
    return out


# --------------------------------------------------------------------------- the analysis
