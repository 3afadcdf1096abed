"""Figures of the theory on real models (``compatkit analyze``).

Paper: Biondi et al., "Stationary Representations: Optimally Approximating
Compatibility and Implications for Improved Model Replacements", CVPR 2024.

- :func:`plot_definition1`: per model pair (t, k), the fraction of sample pairs
  satisfying each inequality of Definition 1 (Corollary 1: below 1) and the
  margin of each inequality in expectation (Theorem 1: > 0 for a stationary
  representation), as lower-triangular heat maps.
- :func:`plot_stationarity`: class spread, angle to the class vertex and drift
  of the class centres against the model index, replacements marked.
- :func:`plot_loss_across_updates`: the paper's Figure 3, the training loss of
  a d-Simplex model per epoch through every model update.

The K = 3 picture of a stationary update is :mod:`compatkit.analysis.demo`. Plots use
matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), in the
style of :mod:`compatkit.report.style`; legends sit outside the axes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..report.style import REPLACEMENT_COLOR as _REPLACEMENT_COLOR
from ..report.style import REPLACEMENT_STAR, legend_outside, model_labels
from ..report.style import new_figure as _new_figure
from ..report.style import save as _save

# One figure style for the report and the paper's figures.
from .montecarlo import TheoryResult
from .theory import RegionModel, check_setting

__all__ = [
    "plot_definition1",
    "plot_loss_across_updates",
    "plot_stationarity",
    "plot_theory",
    "plot_theory_2d",
]


# --------------------------------------------------------------------------- Definition 1


def _pair_grid(pairs: Sequence[Mapping[str, Any]], t_n: int, fn) -> np.ndarray:
    """(T-1) x (T-1) array: row t-1 (new model t = 1..T-1), column k; NaN above the diagonal."""
    a = np.full((max(t_n - 1, 1), max(t_n - 1, 1)), np.nan)
    for p in pairs:
        v = fn(p)
        if v is not None:
            a[p["t"] - 1, p["k"]] = v
    return a


def plot_definition1(
    pairs: Sequence[Mapping[str, Any]],
    num_tasks: int,
    replacement_tasks: Sequence[int],
    metric: str,
    title: str,
    path: str | os.PathLike[str],
) -> Path:
    """Heat maps over (new model t, old model k) of Definition 1 per pair and in expectation.

    Top: fraction of sample pairs satisfying each inequality (Corollary 1
    says it stays below 1). Bottom: the margin of each inequality in
    expectation, signed so that > 0 means it holds (same class: E_old - E_new,
    different class: E_new - E_old), blue where it holds, red where it fails,
    with ✓ / ✗ in each cell. Dashed lines separate models of different
    providers (a replacement between k and t).
    """
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    reps = sorted(set(replacement_tasks))
    n = num_tasks - 1
    if n < 1:
        raise ValueError("Definition 1 needs at least two models")

    def frac(group):
        return lambda p: p[metric][group]["frac"]

    def margin(group):
        def f(p):
            g = p[metric][group]
            e_new, e_old = g["expect_new"]["mean"], g["expect_old"]["mean"]
            if e_new is None:
                return None
            return e_old - e_new if group == "same" else e_new - e_old

        return f

    grids = {
        "same_frac": _pair_grid(pairs, num_tasks, frac("same")),
        "diff_frac": _pair_grid(pairs, num_tasks, frac("diff")),
        "same_margin": _pair_grid(pairs, num_tasks, margin("same")),
        "diff_margin": _pair_grid(pairs, num_tasks, margin("diff")),
    }
    side = min(2.4 + 0.45 * n, 8.0)
    fig = _new_figure(2 * side + 2.4, 2 * side + 0.6)
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(4)]
    show_text = n <= 10
    fs = 9 if n <= 5 else 7
    for ax, key, ttl in zip(
        axes,
        ("same_frac", "diff_frac", "same_margin", "diff_margin"),
        (
            "same class: fraction of pairs with\nd(new, old) ≤ d(old, old)",
            "different class: fraction of pairs with\nd(new, old) ≥ d(old, old)",
            "same class in expectation:\nE[d_old] − E[d_new] (> 0 holds)",
            "different class in expectation:\nE[d_new] − E[d_old] (> 0 holds)",
        ),
        strict=True,
    ):
        a = grids[key]
        masked = np.ma.masked_invalid(a)
        if key.endswith("frac"):
            im = ax.imshow(masked, cmap=colormaps["Greens"], vmin=0.0, vmax=1.0)
            label = "fraction of sample pairs"
        else:
            m = max(float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else 0.0, 1e-6)
            im = ax.imshow(masked, cmap=colormaps["RdBu"], norm=TwoSlopeNorm(0.0, -m, m))
            label = f"margin ({metric} distance)"
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
        for i in range(n):
            for j in range(i + 1):
                v = a[i, j]
                if not np.isfinite(v):
                    continue
                if key.endswith("frac"):
                    txt = f"{v:.2f}" if show_text else ""
                    color = "white" if v > 0.65 else "black"
                else:
                    mark = "✓" if v >= 0 else "✗"
                    txt = f"{mark}\n{v:+.3f}" if show_text else mark
                    color = "white" if abs(v) > 0.6 * m else "black"
                if txt:
                    ax.text(j, i, txt, ha="center", va="center", fontsize=fs, color=color)
        # a replacement at r separates old models k < r from new models t >= r
        for r in reps:
            if 0 < r <= n:
                ax.plot([r - 0.5, r - 0.5], [r - 1.5, n - 0.5], color=_REPLACEMENT_COLOR, ls="--")
                ax.plot([-0.5, r - 0.5], [r - 1.5, r - 1.5], color=_REPLACEMENT_COLOR, ls="--")
        ax.set_xticks(range(n))
        ax.set_xticklabels(model_labels(range(n), reps), fontsize=8)
        ax.set_yticks(range(n))
        ax.set_yticklabels(model_labels(range(1, n + 1), reps), fontsize=8)
        ax.set_xlabel("old model k (gallery)")
        ax.set_ylabel("new model t (query)")
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_title(ttl, fontsize=9)
        for side_name in ("top", "right"):
            ax.spines[side_name].set_visible(False)
    fig.suptitle(
        f"Definition 1 per model pair: {title}, {metric} distance on normalised features"
        + ("  (* replacement model, dashed: different providers)" if len(reps) > 1 else ""),
        fontsize=10,
    )
    fig.subplots_adjust(hspace=0.45, wspace=0.55)
    return _save(fig, path)


# --------------------------------------------------------------------------- stationarity


def _mark_replacements(ax, reps: Sequence[int], t_max: int) -> None:
    for r in reps:
        if 0 < r < t_max:
            ax.axvline(r + 1, color=_REPLACEMENT_COLOR, ls="--", lw=1.0, alpha=0.8)


def _model_axis(ax, t_max: int, reps: Sequence[int]) -> None:
    ax.set_xticks(range(1, t_max + 1))
    ax.set_xticklabels(model_labels(range(t_max), reps), fontsize=8)
    ax.set_xlim(0.6, t_max + 0.4)
    ax.set_xlabel("model (after task t; * = replacement)")
    ax.grid(alpha=0.3)


def plot_stationarity(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    replacement_tasks: Sequence[int],
    path: str | os.PathLike[str],
) -> Path:
    """Class spread, angle to the vertex and centre drift against the model index, per method.

    ``series`` maps a method to its per-model ``stationarity`` records (as
    ``run_analysis.analyze_sequence`` writes them). Theorem 1's picture is a
    spread that shrinks while the angle to the vertex stays where it is; the
    drift panel shows the same for heads without vertices.
    """
    from matplotlib import colormaps

    colors = colormaps["tab10"]
    reps = sorted(set(replacement_tasks))
    fig = _new_figure(15.0, 4.2)
    ax_s, ax_a, ax_d = (fig.add_subplot(1, 3, i + 1) for i in range(3))
    t_max = max((len(v) for v in series.values()), default=1)
    any_angle = False
    for n, (m, recs) in enumerate(series.items()):
        c = colors(n % 10)
        x = [r["task"] + 1 for r in recs]
        ax_s.plot(x, [r["mean_spread"] for r in recs], "o-", color=c, label=m)
        ang = [r["mean_angle_to_vertex_deg"] for r in recs]
        if all(a is not None for a in ang):
            any_angle = True
            ax_a.plot(x, ang, "o-", color=c, label=f"{m}: features")
            ax_a.plot(
                x,
                [r["mean_direction_angle_deg"] for r in recs],
                "s--",
                color=c,
                alpha=0.8,
                label=f"{m}: class centres",
            )
        drift = [(r["task"] + 1, r["centre_drift_prev_deg"]) for r in recs]
        drift = [(a, b) for a, b in drift if b is not None]
        if drift:
            ax_d.plot(*zip(*drift, strict=True), "o-", color=c, label=f"{m}: from previous")
            first = [(r["task"] + 1, r["centre_drift_first_deg"]) for r in recs[1:]]
            ax_d.plot(*zip(*first, strict=True), "s:", color=c, alpha=0.8, label=f"{m}: from 1")
        for r in recs:
            if r["task"] in reps:
                ax_s.scatter([r["task"] + 1], [r["mean_spread"]], zorder=5, **REPLACEMENT_STAR)
    for ax in (ax_s, ax_a, ax_d):
        _mark_replacements(ax, reps, t_max)
        _model_axis(ax, t_max, reps)
    ax_s.set_ylabel("class spread (mean distance to class centre)")
    ax_s.set_title("class spread on the unit sphere (Theorem 1: shrinks)", fontsize=10)
    legend_outside(ax_s)
    ax_a.set_ylabel("angle to class vertex (degrees)")
    ax_a.set_title("angle to the fixed vertex (stationary: stays put)", fontsize=10)
    if any_angle:
        legend_outside(ax_a, fontsize=7, ncol=2)
        ax_a.set_ylim(bottom=0)
    else:
        ax_a.text(
            0.5,
            0.5,
            "no fixed-head method:\nno vertices",
            ha="center",
            va="center",
            transform=ax_a.transAxes,
            color="0.4",
        )
    ax_d.set_ylabel("angle between class centres (degrees)")
    ax_d.set_title("class-centre drift between models", fontsize=10)
    if t_max > 1:
        legend_outside(ax_d, fontsize=7, ncol=2)
        ax_d.set_ylim(bottom=0)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- Figure 3


def plot_loss_across_updates(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    replacement_tasks: Sequence[int],
    path: str | os.PathLike[str],
    seed: int | str | None = None,
) -> Path:
    """The paper's Figure 3: training loss per epoch through every task, one panel per method.

    ``histories`` maps a method to its per-task records ``{"task", "replaced",
    "losses", "loss_parts"}`` (each checkpoint's logged per-epoch means). The
    total loss and each logged part (unweighted, e.g. ``ce`` and ``hoc``) are
    drawn on one epoch axis running through the tasks; thin lines mark task
    boundaries, dashed gold lines the replacements.
    """
    from matplotlib import colormaps

    if not histories:
        raise ValueError("plot_loss_across_updates: no methods")
    colors = colormaps["tab10"]
    reps = sorted(set(replacement_tasks))
    fig = _new_figure(10.0, 3.2 * len(histories) + 0.6)
    axes = [fig.add_subplot(len(histories), 1, i + 1) for i in range(len(histories))]
    for ax, (m, hist) in zip(axes, histories.items(), strict=True):
        xs: list[float] = []
        total: list[float] = []
        parts: dict[str, list[tuple[float, float]]] = {}
        starts, mids = [], []
        offset = 0
        for rec in hist:
            n_ep = len(rec["losses"])
            starts.append((offset, rec["task"], bool(rec.get("replaced"))))
            mids.append((offset + (n_ep + 1) / 2, rec["task"]))
            for e, v in enumerate(rec["losses"]):
                xs.append(offset + e + 1)
                total.append(v)
            for e, p in enumerate(rec.get("loss_parts") or []):
                for k, v in p.items():
                    parts.setdefault(k, []).append((offset + e + 1, v))
            offset += n_ep
        ax.plot(xs, total, "-", color="black", lw=1.8, marker="o", ms=2.5, label="total loss")
        for n, (k, pts) in enumerate(sorted(parts.items())):
            px, py = zip(*pts, strict=True)
            ax.plot(
                px,
                py,
                "-",
                color=colors(n % 10),
                lw=1.2,
                marker=".",
                ms=3,
                label=f"{k.upper()} part (unweighted)",
            )
        for off, _task, replaced in starts:
            if off == 0:
                continue
            if replaced:
                ax.axvline(off + 0.5, color=_REPLACEMENT_COLOR, ls="--", lw=1.4)
            else:
                ax.axvline(off + 0.5, color="0.75", lw=0.8)
        vals = total + [v for pts in parts.values() for _, v in pts]
        if vals and min(vals) > 0 and max(vals) / min(vals) > 30:
            ax.set_yscale("log")
        top = ax.secondary_xaxis("top")
        top.set_xticks([x for x, _ in mids])
        top.set_xticklabels(model_labels([t for _, t in mids], reps), fontsize=8)
        top.set_xlabel("task (* = replacement model)", fontsize=8)
        ax.set_xlim(0.5, offset + 0.5)
        ax.set_ylabel("loss (mean per epoch)")
        ax.set_title(f"{m}" + (f" (seed {seed})" if seed is not None else ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.plot([], [], color=_REPLACEMENT_COLOR, ls="--", label="replacement")
        legend_outside(ax, ncol=4)
    axes[-1].set_xlabel("epoch, all tasks in sequence")
    fig.suptitle("Training loss across model updates (paper Figure 3)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_theory(results: Sequence[TheoryResult], path: str | Path) -> Path:
    """Per-pair fractions and expectation margins against r_new/r_old, one line per shift.

    Left: per-pair satisfaction (same class solid, different class dashed);
    Corollary 1 says these stay below 1. Right: the margin of each inequality
    in expectation, signed so that > 0 means it holds (same: E_old - E_new,
    different: E_new - E_old), with 95 % intervals.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _new_figure(11, 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    shifts = sorted({r.shift for r in results})
    colors = _cycle_colors()
    for n, sh in enumerate(shifts):
        rs = sorted(
            (r for r in results if r.shift == sh), key=lambda r: r.r_new / max(r.r_old, 1e-12)
        )
        x = [r.r_new / r.r_old if r.r_old > 0 else float("nan") for r in rs]
        c = colors[n % len(colors)]
        lab = "stationary" if sh == 0 else f"shift {sh:g}°"
        ax1.plot(x, [r.same_frac for r in rs], "o-", color=c, label=f"{lab}: same")
        ax1.plot(x, [r.diff_frac for r in rs], "s--", color=c, label=f"{lab}: different")
        ax2.errorbar(
            x, [-r.same_gap for r in rs], yerr=[r.same_gap_ci for r in rs],
            fmt="o-", color=c, capsize=3, label=f"{lab}: same (E_old - E_new)",
        )  # fmt: skip
        ax2.errorbar(
            x, [r.diff_gap for r in rs], yerr=[r.diff_gap_ci for r in rs],
            fmt="s--", color=c, capsize=3, label=f"{lab}: different (E_new - E_old)",
        )  # fmt: skip
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_xlabel("r_new / r_old")
    ax1.set_ylabel("fraction of pairs satisfying Definition 1")
    ax1.set_title("per pair (Corollary 1: < 1)")
    ax1.set_ylim(0, 1.05)
    ax1.legend(fontsize=7)
    ax2.axhline(0.0, color="k", lw=0.8)
    ax2.set_xlabel("r_new / r_old")
    ax2.set_ylabel("margin in expectation (> 0: holds)")
    ax2.set_title("in expectation (Theorem 1)")
    ax2.legend(fontsize=7)
    if results:
        r0 = results[0]
        fig.suptitle(
            f"K={r0.K}, d={r0.d}, {r0.region}, {r0.metric}"
            f"{'' if r0.normalize else ' (raw)'}, {r0.coupling}, r_old={r0.r_old:g}",
            fontsize=10,
        )
    fig.tight_layout()
    return _save(fig, path)


def plot_theory_2d(
    path: str | Path,
    r_old: float = 0.5,
    r_new: float = 0.3,
    shift: float = 30.0,
    region: str = "ball",
    n: int = 150,
    seed: int = 0,
) -> Path:
    """K=3, d=2: old and new samples around the simplex vertices, stationary vs shifted."""
    check_setting(3, 2, r_old, r_new, region, "euclidean", "independent")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _new_figure(10, 5)
    axes = fig.subplots(1, 2)
    colors = _cycle_colors()
    for ax, sh in zip(axes, (0.0, shift), strict=True):
        gen = torch.Generator().manual_seed(int(seed))
        model = RegionModel(3, 2, r_old, r_new, sh, region, "independent", gen)
        t = torch.linspace(0, 2 * math.pi, 200)
        ax.plot(torch.cos(t), torch.sin(t), color="0.8", lw=0.8)
        for c in range(3):
            cls = torch.full((n,), c, dtype=torch.long)
            new, old = model.query(cls)
            col = colors[c]
            ax.scatter(old[:, 0], old[:, 1], s=8, facecolors="none", edgecolors=col, alpha=0.5)
            ax.scatter(new[:, 0], new[:, 1], s=8, color=col, alpha=0.8)
            v = model.centers[c]
            ax.plot([0, v[0]], [0, v[1]], color=col, lw=1)
            ax.scatter([v[0]], [v[1]], marker="*", s=150, color="k", zorder=5)
        ax.set_aspect("equal")
        ax.set_xlim(-1.8, 1.8)
        ax.set_ylim(-1.8, 1.8)
        ax.set_title("stationary centres" if sh == 0 else f"new centres rotated by {sh:g}°")
    axes[0].scatter([], [], facecolors="none", edgecolors="k", label=f"old model (r={r_old:g})")
    axes[0].scatter([], [], color="k", label=f"new model (r={r_new:g})")
    axes[0].scatter([], [], marker="*", color="k", label="d-Simplex vertex")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"Theorem 1 model, K=3, d=2, {region}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _cycle_colors() -> list[str]:
    """Matplotlib's default colour cycle (read from its settings, no pyplot import)."""
    import matplotlib as mpl

    return mpl.rcParams["axes.prop_cycle"].by_key()["color"]
