"""Theorem 1 and Corollary 1 checked on a finished run: Definition 1 and stationarity per model.

Paper: Biondi et al., "Stationary Representations: Optimally Approximating
Compatibility and Implications for Improved Model Replacements", CVPR 2024.
Theorem 1 says that a stationary representation (d-Simplex fixed classifier:
class centres that never move, class regions that shrink as models improve)
satisfies both inequalities of Definition 1 (from BCT, Shen et al., CVPR 2020)
*in expectation*; Corollary 1 that no representation satisfies them for every
pair. ``compatkit theory`` shows this on a synthetic model; this module shows
it on the models a run actually trained, so the claim can fail in practice.

For each method and seed, and each pair of models k < t of the task sequence,
the query features of model t and of model k are compared with the gallery
features of model k (``analysis.definition1_pairs``), on the run's evaluation
images. Each model's stationarity (angle of the features to their class
vertex, class spread on the sphere, drift of the class centres between
models) comes from ``analysis.stationarity_stats`` on the same images.

Everything is read from the run directory: ``config.yaml``, ``metrics.json``,
the task checkpoints (class maps, head vertices, logged training losses) and
the feature cache ``compatkit run`` / ``compatkit eval`` leave next to each
checkpoint. A missing or stale cache file is recomputed (and saved) from the
checkpoint and the run's evaluation images, exactly as ``compatkit eval``
would, so an analysis works on any run whose data is still available.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .analysis import definition1_pairs, stationarity_stats
from .errors import CheckpointError, InputError

__all__ = [
    "ANALYSIS_FILE",
    "METRICS",
    "ModelRecord",
    "RunInfo",
    "aa_curves",
    "across_replacement",
    "analyze_run",
    "analyze_sequence",
    "centre_drift_deg",
    "centre_separation_deg",
    "eval_vertices",
    "load_models",
    "load_run",
    "render_markdown",
    "stationarity_lines",
    "summarize_pairs",
    "torch_threads",
    "verdict_lines",
    "write_analysis",
]

ANALYSIS_FILE = "analysis.json"
METRICS = ("cosine", "euclidean")
TITLE = "Analysis: Definition 1 and stationarity"
MAX_PAIR_TABLE_T = 8
"""Above this many tasks the per-pair tables get too long for a report; the heat maps stay."""

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch CPU threads, then restore the previous number.

    The analysis works on tensors of a few hundred thousand elements, where
    intra-op threads cost more in start-up and, on a shared machine, in
    busy-waiting than they save (one thread measured 4x faster than two on
    two busy cores). ``None`` leaves the setting alone.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise InputError(f"threads must be >= 1, got {n}")
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


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
    from .config import load_config
    from .report import load_metrics, method_names

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise InputError(f"{run_dir} is not a compatkit run (no config.yaml)")
    if not (run_dir / "metrics.json").is_file():
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


def class_mean_directions(
    features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classes, (C, d) unit class-mean directions)`` of L2-normalised features."""
    x = F.normalize(features.detach().double().cpu(), dim=1)
    lab = labels.detach().flatten().long().cpu()
    classes, inv = torch.unique(lab, return_inverse=True)
    mean = torch.zeros(classes.numel(), x.shape[1], dtype=torch.float64).index_add_(0, inv, x)
    return classes, F.normalize(mean, dim=1)


def centre_drift_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean angle (degrees) between corresponding rows of two sets of class-mean directions.

    This is the non-stationarity a gallery sees: how far each class centre moved
    from one model to the next. It needs no vertex, so it applies to learnable heads too.
    """
    cos = (F.normalize(a.double(), dim=1) * F.normalize(b.double(), dim=1)).sum(dim=1)
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).mean())


def centre_separation_deg(dirs: torch.Tensor) -> float | None:
    """Mean angle (degrees) between the class-mean directions of one model, over class pairs.

    A small spread means little when every class sits in the same place: this
    tells a tight, well-separated representation from a collapsed one.
    """
    c = dirs.shape[0]
    if c < 2:
        return None
    cos = (F.normalize(dirs.double(), dim=1) @ F.normalize(dirs.double(), dim=1).T).clamp(-1, 1)
    iu = torch.triu_indices(c, c, offset=1)
    return float(torch.rad2deg(torch.arccos(cos[iu[0], iu[1]])).mean())


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


class _FeatureSource:
    """Features of a checkpoint: from its cache when valid, else computed (and cached).

    The data plan (which loads the images) is only built when a cache file is
    missing or stale, so analysing an evaluated run reads no image at all.
    """

    def __init__(self, info: RunInfo, log: Log) -> None:
        self.info = info
        self.log = log
        self._runner = None

    def _computed(self, ckpt: Path) -> tuple[torch.Tensor, ...]:
        from .evaluate import features_for
        from .progress import RunLog
        from .protocol import Runner

        if self._runner is None:
            self.log(f"feature cache missing or stale for {ckpt}: computing it from the checkpoint")
            self._runner = Runner(self.info.cfg, self.info.run_dir, RunLog(None, quiet=True))
        r = self._runner
        plan = r.plan
        mean = torch.tensor(plan.mean, device=r.device).view(1, -1, 1, 1)
        std = torch.tensor(plan.std, device=r.device).view(1, -1, 1, 1)

        def norm(x: torch.Tensor) -> torch.Tensor:  # the same input scaling as evaluation
            return (x.float() / 255.0 - mean) / std

        q, g, _ = features_for(
            ckpt,
            plan.query,
            plan.gallery,
            norm,
            self.info.cfg.eval.batch_size,
            r.precision,
            r.device,
            ckpt.parent / "features",
        )
        return q, g, plan.query.labels.cpu(), plan.gallery.labels.cpu()

    def get(self, ckpt: Path) -> tuple[torch.Tensor, ...]:
        from .checkpoint import file_sha256

        cache = ckpt.parent / "features" / f"{ckpt.stem}.features.pt"
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
    info: RunInfo, method: str, seed: int, source: _FeatureSource | None = None, log: Log = _quiet
) -> list[ModelRecord]:
    """Features, vertices and logged losses of every task model of ``method`` / ``seed``."""
    from .checkpoint import load_checkpoint
    from .evaluate import task_contract
    from .protocol import seed_dir
    from .rundir import check_identity, read_run_id

    source = source or _FeatureSource(info, log)
    d = seed_dir(info.run_dir, method, seed)
    paths = [d / f"task_{t}.pt" for t in range(info.num_tasks)]
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


def _seed_run(metrics: Mapping[str, Any], method: str, seed: int) -> Mapping[str, Any]:
    entry = metrics[method]
    for r in entry.get("runs") or [entry]:
        if r.get("seed") == seed:
            return r
    return entry


def analyze_sequence(
    models: Sequence[ModelRecord],
    replacement_tasks: Sequence[int],
    metrics: Sequence[str] = METRICS,
    max_pairs: int = 100_000,
    matrix: Sequence[Sequence[float]] | None = None,
) -> dict:
    """Definition 1 for every pair k < t and stationarity for every model of one sequence.

    Returns ``{"pairs": [...], "summary": {metric: ...}, "stationarity": [...],
    "loss": [...]}``. Each pair holds ``k``, ``t`` (zero-based), ``consecutive``,
    ``replacements_between``, the full ``definition1_pairs`` result per metric
    and, when the compatibility ``matrix`` is given, the empirical criterion
    C[t][k] > C[k][k] for comparison.
    """
    reps = sorted(set(replacement_tasks))
    pairs = []
    for t in range(len(models)):
        for k in range(t):
            new, old = models[t], models[k]
            rec: dict[str, Any] = {
                "k": k,
                "t": t,
                "consecutive": t == k + 1,
                "replacements_between": across_replacement(k, t, reps),
            }
            for m in metrics:
                rec[m] = definition1_pairs(
                    new.query,
                    old.query,
                    old.gallery,
                    old.query_labels,
                    old.gallery_labels,
                    metric=m,
                    max_pairs=max_pairs,
                )
            rec["class_margin"] = {m: _class_margins(rec[m]) for m in metrics}
            if matrix is not None:
                c_tk, c_kk = float(matrix[t][k]), float(matrix[k][k])
                rec["empirical"] = {"C_tk": c_tk, "C_kk": c_kk, "compatible": c_tk > c_kk}
            pairs.append(rec)

    stats = []
    first_dirs = prev_dirs = None
    for mr in models:
        feats = torch.cat([mr.query, mr.gallery])
        labels = torch.cat([mr.query_labels, mr.gallery_labels])
        s = stationarity_stats(feats, labels, mr.vertices)
        _, dirs = class_mean_directions(feats, labels)
        s["centre_separation_deg"] = centre_separation_deg(dirs)
        s.update(
            {
                "task": mr.task,
                "replaced": bool(mr.extra.get("replaced", mr.task in reps)),
                "provider": mr.extra.get("provider"),
                "head": mr.head,
                "vertex_space": mr.vertex_space,
                "vertex_note": mr.vertex_note,
                "centre_drift_prev_deg": None
                if prev_dirs is None
                else centre_drift_deg(dirs, prev_dirs),
                "centre_drift_first_deg": None
                if first_dirs is None
                else centre_drift_deg(dirs, first_dirs),
            }
        )
        s["per_class"] = {str(c): v for c, v in s["per_class"].items()}
        stats.append(s)
        first_dirs = dirs if first_dirs is None else first_dirs
        prev_dirs = dirs

    loss = [
        {
            "task": mr.task,
            "replaced": bool(mr.extra.get("replaced", mr.task in reps)),
            "losses": [float(v) for v in mr.extra.get("losses") or []],
            "loss_parts": [
                {k: float(v) for k, v in p.items()} for p in mr.extra.get("loss_parts") or []
            ],
        }
        for mr in models
    ]
    return {
        "pairs": pairs,
        "summary": {m: summarize_pairs(pairs, m) for m in metrics},
        "stationarity": stats,
        "loss": loss,
    }


def _class_margins(d1: Mapping[str, Any]) -> dict:
    """E[d | different class] - E[d | same class], across models and within the old model.

    The different-class inequality of Definition 1 also holds when the new
    model's features are simply far from the old gallery whatever the class
    (incompatible models): then the cross-model margin collapses to about 0
    while the old model's own margin stays positive. These two numbers tell
    the two cases apart.
    """
    sn, so = d1["same"]["expect_new"]["mean"], d1["same"]["expect_old"]["mean"]
    dn, do = d1["diff"]["expect_new"]["mean"], d1["diff"]["expect_old"]["mean"]
    if None in (sn, so, dn, do):
        return {"cross_model": None, "old_model": None}
    return {"cross_model": dn - sn, "old_model": do - so}


def _significant(group: Mapping[str, Any], same: bool) -> bool:
    """The expectation inequality holds with the paired gap's 95 % interval excluding 0."""
    gap = group["gap_new_minus_old"]
    if gap.get("low") is None:
        return False
    return gap["high"] < 0 if same else gap["low"] > 0


def summarize_pairs(pairs: Sequence[Mapping[str, Any]], metric: str) -> dict:
    """Counts of pairs where each inequality holds in expectation, by kind of pair.

    Kinds: ``all``, ``consecutive`` (t = k + 1), ``across_replacement`` (a
    replacement at some r with k < r <= t) and ``within_segment`` (the rest).
    ``*_significant`` counts only pairs whose paired-gap interval excludes 0;
    ``*_frac_mean`` / ``*_frac_min`` summarise the per-pair fractions that
    Corollary 1 says cannot all reach 1.
    """
    kinds = {
        "all": list(pairs),
        "consecutive": [p for p in pairs if p["consecutive"]],
        "across_replacement": [p for p in pairs if p["replacements_between"]],
        "within_segment": [p for p in pairs if not p["replacements_between"]],
    }
    out = {}
    for name, ps in kinds.items():
        same = [p[metric]["same"] for p in ps]
        diff = [p[metric]["diff"] for p in ps]
        sf = [g["frac"] for g in same if g["frac"] is not None]
        df = [g["frac"] for g in diff if g["frac"] is not None]
        out[name] = {
            "pairs": len(ps),
            "same_holds": sum(bool(g["holds_in_expectation"]) for g in same),
            "diff_holds": sum(bool(g["holds_in_expectation"]) for g in diff),
            "both_hold": sum(
                bool(a["holds_in_expectation"] and b["holds_in_expectation"])
                for a, b in zip(same, diff, strict=True)
            ),
            "same_significant": sum(_significant(g, True) for g in same),
            "diff_significant": sum(_significant(g, False) for g in diff),
            "same_frac_mean": float(np.mean(sf)) if sf else None,
            "same_frac_min": float(np.min(sf)) if sf else None,
            "diff_frac_mean": float(np.mean(df)) if df else None,
            "diff_frac_min": float(np.min(df)) if df else None,
            "empirical_compatible": sum(bool(p.get("empirical", {}).get("compatible")) for p in ps),
            "cross_model_class_margin_mean": _mean(
                p.get("class_margin", {}).get(metric, {}).get("cross_model") for p in ps
            ),
            "old_model_class_margin_mean": _mean(
                p.get("class_margin", {}).get(metric, {}).get("old_model") for p in ps
            ),
        }
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def aa_curves(metrics: Mapping[str, Any], methods: Sequence[str] | None = None) -> dict:
    """``{method: (mean AA_t, sample std or None)}`` over the seeds of a metrics dict."""
    from .report import aa_curve, method_names

    out = {}
    for m in methods or method_names(metrics):
        if m not in metrics:
            continue
        runs = metrics[m].get("runs") or [metrics[m]]
        arr = np.asarray(
            [r["AA"] if r.get("AA") is not None else aa_curve(r["matrix"]) for r in runs], float
        )
        std = arr.std(axis=0, ddof=1).tolist() if len(arr) > 1 else None
        out[m] = (arr.mean(axis=0).tolist(), std)
    return out


def _resolve_seeds(info: RunInfo, seeds: Sequence[int] | str | None) -> list[int]:
    if seeds is None:
        return info.seeds[:1]
    if seeds == "all":
        return list(info.seeds)
    bad = [s for s in seeds if s not in info.seeds]
    if bad:
        raise InputError(f"seed(s) {bad} not in this run (seeds {info.seeds})")
    return list(seeds)


def analyze_run(
    run_dir: str | os.PathLike[str],
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | str | None = None,
    metrics: Sequence[str] = METRICS,
    max_pairs: int = 100_000,
    no_replacement_run: str | os.PathLike[str] | None = None,
    plots: bool = True,
    log: Log = _quiet,
    threads: int | None = 1,
) -> dict:
    """Analyse a run directory; write ``analysis.json``, plots and the refreshed report.

    Args:
        run_dir: a directory written by ``compatkit run``.
        methods: methods to analyse (default: every method of the run).
        seeds: run seeds to analyse, or ``"all"`` (default: the first seed).
        metrics: distances for Definition 1 (``cosine``, ``euclidean``).
        max_pairs: pairs per group (same / different class) per model pair;
            larger groups are sampled uniformly.
        no_replacement_run: the same scenario run with ``no_replacement: true``;
            its AA_t curves become the second panel of the AA figure (Figure 4).
        plots: write the PNG figures under ``RUN_DIR/plots``.
        log: where progress lines go.
        threads: torch CPU threads while analysing (see :func:`torch_threads`).

    Returns:
        The dict written to ``RUN_DIR/analysis.json`` (see ``render_markdown``
        for the section appended to ``report.md``).
    """
    with torch_threads(threads):
        return _analyze_run(
            run_dir, methods, seeds, metrics, max_pairs, no_replacement_run, plots, log
        )


def _analyze_run(run_dir, methods, seeds, metrics, max_pairs, no_replacement_run, plots, log):
    info = load_run(run_dir)
    if max_pairs < 1:
        raise InputError(f"--pairs must be >= 1, got {max_pairs}")
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise InputError(f"unknown metric(s) {bad}; choose from {list(METRICS)}")
    methods = list(methods) if methods else list(info.methods)
    unknown = [m for m in methods if m not in info.methods]
    if unknown:
        raise InputError(f"method(s) {unknown} not in this run (methods {info.methods})")
    seed_list = _resolve_seeds(info, seeds)

    other = None
    if no_replacement_run is not None:
        other = load_run(no_replacement_run)

    source = _FeatureSource(info, log)
    results: dict[str, Any] = {}
    for m in methods:
        per_seed = {}
        head = None
        for s in seed_list:
            log(f"{m} seed {s}: loading {info.num_tasks} models")
            models = load_models(info, m, s, source, log)
            head = models[0].head
            run = _seed_run(info.metrics, m, s)
            per_seed[str(s)] = analyze_sequence(
                models, info.replacement_tasks, metrics, max_pairs, run.get("matrix")
            )
        results[m] = {"head": head, "seeds": per_seed}

    out: dict[str, Any] = {
        "title": TITLE,
        "settings": {
            "methods": methods,
            "seeds": seed_list,
            "metrics": list(metrics),
            "max_pairs_per_group": max_pairs,
            "features": "queries by models t and k against the gallery by model k (k < t)",
            "normalized": True,
            "stationarity_samples": "query and gallery images together",
        },
        "num_tasks": info.num_tasks,
        "replacement_tasks": info.replacement_tasks,
        "methods": results,
        "aa": {
            "with_replacement": {m: c[0] for m, c in aa_curves(info.metrics, methods).items()},
        },
        "notes": [],
        "plots": [],
    }
    if other is not None:
        out["aa"]["without_replacement"] = {
            m: c[0] for m, c in aa_curves(other.metrics, methods).items()
        }
        out["aa"]["no_replacement_run"] = str(other.run_dir)
        if not other.cfg.no_replacement:
            out["notes"].append(
                f"{other.run_dir} was not run with no_replacement: true; its AA_t curves are "
                "shown as the second panel anyway"
            )
        if other.num_tasks != info.num_tasks:
            out["notes"].append(
                f"{other.run_dir} has {other.num_tasks} tasks, this run {info.num_tasks}"
            )
    out["verdicts"] = verdict_lines(out)
    out["stationarity_verdicts"] = stationarity_lines(out)
    if plots:
        out["plots"] = _write_plots(info, out, other)
    out["markdown"] = render_markdown(out)
    write_analysis(info.run_dir, out)
    return out


def _write_plots(info: RunInfo, out: dict, other: RunInfo | None) -> list[str]:
    """All figures of the analysis; returns their paths relative to the run directory."""
    from . import figures
    from .report import plot_aa, plot_matrices_grid, safe_name

    plots = info.run_dir / "plots"
    reps = info.replacement_tasks
    written = []
    seed0 = str(out["settings"]["seeds"][0])
    metric0 = out["settings"]["metrics"][0]
    methods = out["settings"]["methods"]
    for m in methods:
        r = out["methods"][m]["seeds"][seed0]
        if not r["pairs"]:
            continue
        p = plots / f"definition1_{safe_name(m)}.png"
        figures.plot_definition1(
            r["pairs"], info.num_tasks, reps, metric0, f"{m} (seed {seed0})", p
        )
        written.append(p)
    p = plots / "stationarity.png"
    figures.plot_stationarity(
        {m: out["methods"][m]["seeds"][seed0]["stationarity"] for m in methods}, reps, p
    )
    written.append(p)
    p = plots / "loss_across_updates.png"
    hist = {m: out["methods"][m]["seeds"][seed0]["loss"] for m in methods}
    fixed = {m: h for m, h in hist.items() if out["methods"][m]["head"] != "learnable"}
    figures.plot_loss_across_updates(fixed or hist, reps, p, seed=seed0)
    written.append(p)
    p = plots / "figure5_matrices.png"
    plot_matrices_grid({m: _seed_run(info.metrics, m, int(seed0)) for m in methods}, p, reps)
    written.append(p)
    if other is not None:
        p = plots / "aa_replacement_vs_none.png"
        with_r = aa_curves(info.metrics, methods)
        without = aa_curves(other.metrics, methods)
        plot_aa(
            with_r,
            reps,
            p,
            title="with replacements",
            no_replacement=without,
            no_replacement_title="without replacements",
        )
        written.append(p)
    return [str(w.relative_to(info.run_dir)) for w in written]


def write_analysis(run_dir: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """Write ``analysis.json`` atomically, then regenerate ``report.md`` (which appends it)."""
    from .report import write_report

    run_dir = Path(run_dir)
    path = run_dir / ANALYSIS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
    write_report(run_dir)
    return path


# --------------------------------------------------------------------------- text


def _count(s: Mapping[str, Any], key: str) -> str:
    return f"{s[key]}/{s['pairs']}"


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per method, seed and metric: where Definition 1 holds in expectation."""
    lines = []
    for m, entry in result["methods"].items():
        for seed, r in entry["seeds"].items():
            for metric, s in r["summary"].items():
                a = s["all"]
                if a["pairs"] == 0:
                    lines.append(f"{m} (seed {seed}, {metric}): one model, no pairs to check")
                    continue
                line = (
                    f"{m} (seed {seed}, {metric}): same-class inequality holds in expectation "
                    f"for {_count(a, 'same_holds')} pairs, different-class "
                    f"{_count(a, 'diff_holds')}, both {_count(a, 'both_hold')}"
                )
                parts = []
                for kind, label in (
                    ("consecutive", "consecutive pairs"),
                    ("across_replacement", "across a replacement"),
                ):
                    k = s[kind]
                    if k["pairs"]:
                        parts.append(
                            f"{label}: same {_count(k, 'same_holds')}, "
                            f"different {_count(k, 'diff_holds')}"
                        )
                if parts:
                    line += " (" + "; ".join(parts) + ")"
                line += (
                    f"; per pair at best {max_frac(r['pairs'], metric, 'same'):.2f} / "
                    f"{max_frac(r['pairs'], metric, 'diff'):.2f} of sample pairs satisfy them"
                )
                if a["cross_model_class_margin_mean"] is not None:
                    line += (
                        "; class margin E[d diff] - E[d same] across models "
                        f"{a['cross_model_class_margin_mean']:.3f} (old model alone "
                        f"{a['old_model_class_margin_mean']:.3f})"
                    )
                lines.append(line)
    return lines


def stationarity_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per method and seed: does the spread shrink while the vertex angle stays put?"""
    lines = []
    for m, entry in result["methods"].items():
        for seed, r in entry["seeds"].items():
            st = r["stationarity"]
            if not st:
                continue
            spread = [s["mean_spread"] for s in st]
            steps = len(spread) - 1
            shrinks = sum(b < a for a, b in pairwise(spread))
            line = (
                f"{m} (seed {seed}): class spread {spread[0]:.3f} -> {spread[-1]:.3f} "
                f"(shrinks at {shrinks}/{steps} updates)"
            )
            ang = [s["mean_angle_to_vertex_deg"] for s in st]
            if all(a is not None for a in ang):
                jump = max((abs(b - a) for a, b in pairwise(ang)), default=0.0)
                line += (
                    f"; angle to vertex {ang[0]:.1f}° -> {ang[-1]:.1f}° "
                    f"(largest change between consecutive models {jump:.1f}°)"
                )
            else:
                line += "; no fixed vertex (learnable head)"
            drift = [s["centre_drift_prev_deg"] for s in st[1:]]
            if drift:
                line += (
                    f"; class centres move {float(np.mean(drift)):.1f}° per update on average "
                    f"(at most {max(drift):.1f}°)"
                )
            lines.append(line)
    return lines


def max_frac(pairs: Sequence[Mapping[str, Any]], metric: str, group: str) -> float:
    """Largest per-pair satisfaction fraction over model pairs (Corollary 1: below 1)."""
    vals = [p[metric][group]["frac"] for p in pairs if p[metric][group]["frac"] is not None]
    return max(vals) if vals else float("nan")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _model(k: int, reps: Sequence[int]) -> str:
    return f"{k + 1}*" if k in reps else str(k + 1)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _expect(g: Mapping[str, Any]) -> str:
    """``E_new vs E_old (gap ± 95 % half-width)``: the gap is paired, so its interval is tight."""
    e, o, gap = g["expect_new"], g["expect_old"], g["gap_new_minus_old"]
    if e["mean"] is None:
        return "n/a"
    hw = f" ± {gap['half_width']:.4f}" if gap.get("half_width") is not None else ""
    return f"{e['mean']:.4f} vs {o['mean']:.4f} ({gap['mean']:+.4f}{hw})"


def render_markdown(result: Mapping[str, Any]) -> str:
    """The report section: verdicts, summary tables, per-pair tables, stationarity, figures."""
    s = result["settings"]
    reps = result["replacement_tasks"]
    t_n = result["num_tasks"]
    metric0 = s["metrics"][0]
    plots = set(result.get("plots") or [])
    out = [
        "Definition 1 (Biondi et al., CVPR 2024, from BCT) checked on the evaluation images: "
        "for each pair of models k < t, the query features of model t and of model k against "
        "the gallery features of model k, on L2-normalised features "
        f"({', '.join(s['metrics'])}); up to {s['max_pairs_per_group']:,} sample pairs per "
        "group, sampled uniformly when a group has more. Theorem 1: a stationary (d-Simplex) "
        "representation satisfies both inequalities *in expectation*; Corollary 1: no "
        "representation satisfies them for every sample pair, so the per-pair fractions stay "
        "below 1. Models are numbered from 1; * marks a model that replaced its predecessor.",
        "",
        "### Verdicts",
        "",
        *[f"- {line}" for line in result["verdicts"]],
        "",
    ]
    for note in result.get("notes") or []:
        out += [f"Note: {note}", ""]

    header = [
        "method",
        "seed",
        "metric",
        "same holds",
        "different holds",
        "both",
        "consecutive (same / diff)",
        "across replacement (same / diff)",
        "per-pair same (mean, min)",
        "per-pair diff (mean, min)",
        "C[t][k] > C[k][k]",
    ]
    rows = []
    for m, entry in result["methods"].items():
        for seed, r in entry["seeds"].items():
            for metric, sm in r["summary"].items():
                a, c, x = sm["all"], sm["consecutive"], sm["across_replacement"]
                rows.append(
                    [
                        m,
                        seed,
                        metric,
                        _count(a, "same_holds"),
                        _count(a, "diff_holds"),
                        _count(a, "both_hold"),
                        f"{_count(c, 'same_holds')} / {_count(c, 'diff_holds')}",
                        f"{_count(x, 'same_holds')} / {_count(x, 'diff_holds')}"
                        if x["pairs"]
                        else "none",
                        f"{_fmt(a['same_frac_mean'])}, {_fmt(a['same_frac_min'])}",
                        f"{_fmt(a['diff_frac_mean'])}, {_fmt(a['diff_frac_min'])}",
                        _count(a, "empirical_compatible"),
                    ]
                )
    out += ["### Definition 1 in expectation", "", _table(header, rows), ""]
    out += [
        '"holds" compares the two expected distances; the paired difference\'s 95 % '
        "interval is in analysis.json (`gap_new_minus_old`), with the count of pairs where it "
        "excludes 0 (`same_significant`, `diff_significant`). The last column is the "
        "empirical criterion of the compatibility matrix, for comparison. The class margin "
        "E[d | different class] - E[d | same class] of new queries against the old gallery "
        "(in the verdicts) tells a compatible update from one whose features are simply far "
        "from the old gallery: the different-class inequality holds in both cases, but only "
        "the first keeps a positive margin.",
        "",
    ]

    seed0 = str(s["seeds"][0])
    from .report import safe_name

    for m, entry in result["methods"].items():
        r = entry["seeds"].get(seed0)
        if r is None or not r["pairs"]:
            continue
        out += [f"### Definition 1 per model pair: {m} (seed {seed0}, {metric0})", ""]
        img = f"plots/definition1_{safe_name(m)}.png"
        if img in plots:
            out += [f"![Definition 1, {m}]({img})", ""]
        if t_n <= MAX_PAIR_TABLE_T:
            prow = []
            for p in r["pairs"]:
                g_s, g_d = p[metric0]["same"], p[metric0]["diff"]
                prow.append(
                    [
                        _model(p["t"], reps),
                        _model(p["k"], reps),
                        "yes" if p["replacements_between"] else "",
                        _fmt(g_s["frac"]),
                        _expect(g_s),
                        "✓" if g_s["holds_in_expectation"] else "✗",
                        _fmt(g_d["frac"]),
                        _expect(g_d),
                        "✓" if g_d["holds_in_expectation"] else "✗",
                        "✓" if p.get("empirical", {}).get("compatible") else "✗",
                    ]
                )
            out += [
                _table(
                    [
                        "t",
                        "k",
                        "across replacement",
                        "same: frac",
                        "same: E new vs E old (gap)",
                        "same holds",
                        "diff: frac",
                        "diff: E new vs E old (gap)",
                        "diff holds",
                        "C[t][k] > C[k][k]",
                    ],
                    prow,
                ),
                "",
            ]

    out += ["### Stationarity", ""]
    out += [*[f"- {line}" for line in result.get("stationarity_verdicts") or []], ""]
    if "plots/stationarity.png" in plots:
        out += ["![stationarity](plots/stationarity.png)", ""]
    srows = []
    for m, entry in result["methods"].items():
        r = entry["seeds"].get(seed0)
        if r is None:
            continue
        for st in r["stationarity"]:
            srows.append(
                [
                    m,
                    _model(st["task"], reps),
                    _fmt(st["mean_angle_to_vertex_deg"], 1),
                    _fmt(st["mean_direction_angle_deg"], 1),
                    _fmt(st["mean_spread"], 3),
                    _fmt(st["centre_separation_deg"], 1),
                    _fmt(st["centre_drift_prev_deg"], 1),
                    _fmt(st["centre_drift_first_deg"], 1),
                ]
            )
    out += [
        _table(
            [
                "method",
                "model",
                "angle to vertex (°)",
                "class centre to vertex (°)",
                "class spread",
                "angle between class centres (°)",
                "centre drift from previous (°)",
                "centre drift from model 1 (°)",
            ],
            srows,
        ),
        "",
        f"Seed {seed0}, query and gallery images together. Angles are means over classes of "
        "the angle between each L2-normalised feature (or the class-mean direction) and the "
        "class's vertex of the model's head; n/a for learnable heads, whose rows move. The "
        "spread is the mean distance of the normalised features from their class-mean "
        "direction (the hyperball radius of Theorem 1): it should shrink as models improve "
        "while the centres stay at their vertices. The angle between class centres tells a "
        "tight representation from a collapsed one (every class in one place).",
        "",
    ]

    figs = []
    if "plots/loss_across_updates.png" in plots:
        figs += [
            "Figure 3, training loss across model updates (per epoch, every task in turn; "
            "dashed lines: replacements):",
            "",
            "![loss across updates](plots/loss_across_updates.png)",
            "",
        ]
    if "plots/aa_replacement_vs_none.png" in plots:
        figs += [
            "Figure 4, AA_t with and without replacements:",
            "",
            "![AA with and without replacements](plots/aa_replacement_vs_none.png)",
            "",
        ]
    if "plots/figure5_matrices.png" in plots:
        figs += [
            f"Figure 5, compatibility matrices (seed {seed0}; violations hatched in red):",
            "",
            "![matrices](plots/figure5_matrices.png)",
            "",
        ]
    if figs:
        out += ["### Paper figures from this run", "", *figs]
    return "\n".join(out).rstrip() + "\n"
