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

Everything is read from the run directory (:mod:`compatkit.analysis.models`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..report import aa_curve, method_names, plot_aa, safe_name, write_report
from ..runtime.files import atomic_write_json
from ..runtime.layout import RunDir
from . import figures
from .models import (
    FeatureSource,
    Log,
    ModelRecord,
    RunInfo,
    across_replacement,
    load_models,
    load_run,
    quiet,
)
from .pairs import class_margins, summarize_pairs
from .render import render_markdown, stationarity_lines, verdict_lines
from .stats import (
    centre_drift_deg,
    centre_separation_deg,
    class_mean_directions,
    definition1_pairs,
    stationarity_stats,
    torch_threads,
)

__all__ = [
    "ANALYSIS_FILE",
    "METRICS",
    "aa_curves",
    "analyze_run",
    "analyze_sequence",
    "write_analysis",
]

ANALYSIS_FILE = RunDir(".").analysis.name
METRICS = ("cosine", "euclidean")
TITLE = "Analysis: Definition 1 and stationarity"


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
            rec["class_margin"] = {m: class_margins(rec[m]) for m in metrics}
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


def aa_curves(metrics: Mapping[str, Any], methods: Sequence[str] | None = None) -> dict:
    """``{method: (mean AA_t, sample std or None)}`` over the seeds of a metrics dict."""

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
    log: Log = quiet,
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

    source = FeatureSource(info, log)
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
    else:
        out["plots"] = _earlier_plots(info.run_dir, out)
    out["markdown"] = render_markdown(out)
    write_analysis(info.run_dir, out)
    return out


def _write_plots(info: RunInfo, out: dict, other: RunInfo | None) -> list[str]:
    """All figures of the analysis; returns their paths relative to the run directory."""

    plots = RunDir(info.run_dir).plots
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
    # Figure 5 is the report's own plots/matrices.png (first seed): drawing it again here would
    # only copy it. A copy left by an older version goes, so the report embeds it once.
    (plots / "figure5_matrices.png").unlink(missing_ok=True)
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


def _earlier_plots(run_dir: Path, out: Mapping[str, Any]) -> list[str]:
    """With ``plots=False``: the figures an earlier analysis drew, when they still show this
    analysis (same methods, first seed and metric) and are still on disk, so the report keeps
    its links; figures of another analysis are not linked (they would show other models)."""
    try:
        prev = json.loads(RunDir(run_dir).analysis.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(prev, dict) or not isinstance(prev.get("settings"), dict):
        return []
    a, b = prev["settings"], out["settings"]
    same = (
        a.get("methods") == b["methods"]
        and (a.get("seeds") or [None])[0] == b["seeds"][0]
        and (a.get("metrics") or [None])[0] == b["metrics"][0]
        and (prev.get("aa") or {}).get("no_replacement_run")
        == (out.get("aa") or {}).get("no_replacement_run")
    )
    if not same:
        return []
    return [p for p in prev.get("plots") or [] if isinstance(p, str) and (run_dir / p).is_file()]


def write_analysis(run_dir: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """Write ``analysis.json`` atomically, then regenerate ``report.md`` (which appends it)."""

    path = atomic_write_json(RunDir(run_dir).analysis, dict(result))
    write_report(run_dir)
    return path
