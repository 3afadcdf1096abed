"""The run report's plots: compatibility matrices (the paper's Figure 5), AA_t (Figure 4) and
plasticity beside it (local-class accuracy per task).

Index conventions: matrices are stored zero-based; everything shown to a reader (tick labels,
legends) is one-based, ``model t`` being the model after task t, ``*`` a replacement model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .metrics_file import Matrix, lower_triangle, resolve_violations
from .style import (
    REPLACEMENT_COLOR,
    REPLACEMENT_STAR,
    VIOLATION_EDGE,
    VIOLATION_FACE,
    legend_outside,
    model_labels,
    new_figure,
    save,
)

__all__ = ["plot_aa", "plot_matrices_grid", "plot_matrix", "plot_plasticity"]

BOUNDARY_LW = 2.0
"""Points; the dashed replacement boundaries must read against hatched violation cells."""
MAX_CELL_TEXT_T = 12
"""Above this many tasks the numbers no longer fit in the cells; the colours carry them."""


def _cell_text_style(t: int) -> tuple[int, float] | None:
    """(decimals, font size in points) of the numbers printed in cells, None to omit them."""
    if t > MAX_CELL_TEXT_T:
        return None
    if t <= 7:
        return 2, 9.0
    return 1, 8.0 if t <= 9 else 7.0


def _matrix_side(t: int) -> float:
    """Inches per matrix panel: ~0.6 in per cell for small T, capped so T = 31 fits a page."""
    return float(min(max(0.62 * t + 1.2, 3.0), 9.0))


def _draw_matrix(
    fig,
    ax,
    c: np.ndarray,
    viol: set[tuple[int, int]],
    title: str,
    replacement_tasks: Sequence[int],
    vmin: float,
    vmax: float,
    colorbar: bool = True,
):
    from matplotlib.patches import Rectangle

    t = c.shape[0]
    masked = np.ma.masked_invalid(c)
    cmap = _cmap()
    im = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_facecolor("white")
    style = _cell_text_style(t)
    span = max(vmax - vmin, 1e-9)
    lw = 2.0 if t <= 12 else 1.2
    for i in range(t):
        for j in range(i + 1):
            bad = (i, j) in viol
            if bad:
                ax.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        facecolor=VIOLATION_FACE,
                        edgecolor=VIOLATION_EDGE,
                        hatch="//",
                        linewidth=lw,
                        zorder=3,
                    )
                )
            if style is not None:
                decimals, size = style
                level = (c[i, j] - vmin) / span
                # Blues runs light to dark: dark cells need white digits.
                color = "white" if level > 0.6 and not bad else "black"
                ax.text(
                    j,
                    i,
                    f"{c[i, j]:.{decimals}f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color=color,
                    fontweight="bold" if bad else "normal",
                    zorder=4,
                )
    # Segment boundaries: a replacement starts a new model lineage at that task. They run
    # along cell edges, so they are drawn above the violation boxes (zorder 3) and the cell
    # text (4), or a violating cell next to a replacement would hide them.
    for r in replacement_tasks:
        if 0 < r < t:
            for xs, ys in (
                ([-0.5, r - 0.5], [r - 0.5, r - 0.5]),
                ([r - 0.5] * 2, [r - 0.5, t - 0.5]),
            ):
                ax.plot(xs, ys, color=REPLACEMENT_COLOR, lw=BOUNDARY_LW, ls="--", zorder=5)
    step = 1 if t <= 16 else 2
    ticks = [k for k in range(t) if k % step == 0 or k in replacement_tasks]
    labels = model_labels(ticks, replacement_tasks)
    tick_size = 9 if t <= 12 else 7
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=tick_size)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=tick_size)
    for lab in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if lab.get_text().endswith("*"):
            lab.set_fontweight("bold")
            lab.set_color(REPLACEMENT_COLOR)
    ax.set_xlabel("gallery model (task)")
    ax.set_ylabel("query model (task)")
    ax.set_xlim(-0.5, t - 0.5)
    ax.set_ylim(t - 0.5, -0.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    n_pairs = t * (t - 1) // 2
    note = (
        f"{len(viol)} of {n_pairs} pairs violate C[i][j] > C[j][j]"
        if n_pairs
        else "one model: no pairs to compare"
    )
    ax.set_title(f"{title}\n{note}", fontsize=10)
    if colorbar:
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label("1:N search accuracy (%)")
    return im


def _cmap():
    from matplotlib import colormaps

    # Blues: light for low accuracy, dark for high; the red violation overlay stays distinct.
    return colormaps["Blues"]


def _legend_handles(replacement_tasks: Sequence[int], t: int) -> list:
    """Key to the marks of a matrix plot (none for one model: nothing can violate)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if t == 1:
        return []
    handles = [
        Patch(
            facecolor=VIOLATION_FACE,
            edgecolor=VIOLATION_EDGE,
            hatch="//",
            label="violation: C[i][j] ≤ C[j][j]",
        )
    ]
    if any(0 <= r < t for r in replacement_tasks):
        handles.append(
            Line2D(
                [],
                [],
                color=REPLACEMENT_COLOR,
                lw=BOUNDARY_LW,
                ls="--",
                label="replacement (* model): a new provider's lineage starts",
            )
        )
    return handles


def plot_matrix(
    matrix: Matrix | np.ndarray,
    violations: Iterable[Any] | None,
    title: str,
    path: str | os.PathLike[str],
    replacement_tasks: Sequence[int] = (),
) -> None:
    """Heat map of one compatibility matrix (the paper's Figure 5), saved as PNG at ``path``.

    Rows are query models, columns gallery models, numbered from 1; the upper triangle is
    blank. Cells that break the criterion get a hatched light-red background with a red
    outline; replacement models (zero-based ``replacement_tasks``) are marked with ``*`` and
    set in bold, with dashed lines where a new lineage starts. ``violations=None``
    recomputes them from the matrix.
    """
    c = lower_triangle(matrix)
    viol = resolve_violations(c, violations)
    reps = sorted(set(replacement_tasks))
    side = _matrix_side(c.shape[0])
    fig = new_figure(side + 1.2, side + 0.6)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = float(np.nanmin(c)), float(np.nanmax(c))
    _draw_matrix(fig, ax, c, viol, title, reps, lo, hi if hi > lo else lo + 1.0)
    handles = _legend_handles(reps, c.shape[0])
    if handles:  # under the axes, where it can hide no cell
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            fontsize=8,
            frameon=False,
        )
    save(fig, path)


def _unpack_method(value: Any) -> tuple[Any, Any]:
    if isinstance(value, Mapping):
        return value["matrix"], value.get("violations")
    if isinstance(value, tuple) and len(value) == 2:
        return value
    return value, None  # a bare matrix: violations recomputed


def plot_matrices_grid(
    methods: Mapping[str, Any],
    path: str | os.PathLike[str],
    replacement_tasks: Sequence[int] = (),
) -> None:
    """Several methods' matrices side by side on one colour scale (the paper's Figure 5).

    ``methods`` maps a name to ``{"matrix", "violations"}`` (a metrics.json method entry
    works as is), a ``(matrix, violations)`` pair, or a bare matrix. One shared colour scale
    makes a collapse to chance in one method visible next to another's stable block.
    """
    if not methods:
        raise ValueError("plot_matrices_grid: no methods to plot")
    items = []
    for name, value in methods.items():
        matrix, violations = _unpack_method(value)
        c = lower_triangle(matrix, name=f"{name} matrix")
        items.append((name, c, resolve_violations(c, violations)))
    lo = min(float(np.nanmin(c)) for _, c, _ in items)
    hi = max(float(np.nanmax(c)) for _, c, _ in items)
    hi = hi if hi > lo else lo + 1.0
    t = max(c.shape[0] for _, c, _ in items)
    reps = sorted(set(replacement_tasks))
    ncols = min(len(items), 3)
    nrows = math.ceil(len(items) / ncols)
    side = _matrix_side(t)
    fig = new_figure(side * ncols + 1.0, side * nrows + 0.8)
    axes = [fig.add_subplot(nrows, ncols, k + 1) for k in range(len(items))]
    im = None
    for ax, (name, c, viol) in zip(axes, items, strict=True):
        im = _draw_matrix(fig, ax, c, viol, name, reps, lo, hi, colorbar=False)
    fig.subplots_adjust(wspace=0.3, hspace=0.45)
    cb = fig.colorbar(im, ax=axes, fraction=0.025, pad=0.03)
    cb.set_label("1:N search accuracy (%)")
    handles = _legend_handles(reps, t)
    if handles:  # under the whole grid: below one panel it would cover the next row's title
        fig.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.02),
            ncol=2,
            fontsize=9,
            frameon=False,
        )
    save(fig, path)


def _curve(value: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(value, tuple) and len(value) == 2:
        mean, std = value
        return np.asarray(mean, dtype=float), (None if std is None else np.asarray(std, float))
    return np.asarray(value, dtype=float), None


def _draw_task_curves(
    ax,
    curves: Mapping[str, Any],
    replacement_tasks: Sequence[int],
    title: str,
    ylabel: str = "AA$_t$ (%)",
    chance: Sequence[float] | None = None,
) -> None:
    """One line per method against task t = 1..T (mean, with a ±std band over seeds)."""
    from matplotlib import colormaps

    colors = colormaps["tab10"]
    t_max = 1
    for k, (name, value) in enumerate(curves.items()):
        mean, std = _curve(value)
        ts = np.arange(1, len(mean) + 1)
        t_max = max(t_max, len(mean))
        color = colors(k % 10)
        ax.plot(ts, mean, marker="o", ms=3.5, lw=1.8, color=color, label=name)
        if std is not None and np.any(np.nan_to_num(std) > 0):
            ax.fill_between(ts, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        marks = [r for r in replacement_tasks if 0 <= r < len(mean)]
        if marks:
            ax.scatter([r + 1 for r in marks], mean[marks], zorder=5, **REPLACEMENT_STAR)
    if chance is not None:
        ts = np.arange(1, len(chance) + 1)
        ax.plot(ts, chance, ls=":", lw=1.4, color="0.35", label="chance (1 / classes seen)")
    for r in replacement_tasks:
        if 0 < r < t_max:
            ax.axvline(r + 1, color=REPLACEMENT_COLOR, ls="--", lw=1.0, alpha=0.8)
    if replacement_tasks:
        ax.scatter([], [], label="replacement (* model)", **REPLACEMENT_STAR)
    ax.set_xlabel("task t")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    step = 1 if t_max <= 16 else 5
    ticks = sorted({1, *range(step, t_max + 1, step)})
    if t_max - ticks[-1] >= step / 2:  # label the last task unless it would collide
        ticks.append(t_max)
    ax.set_xticks(ticks)
    ax.set_xlim(0.6, t_max + 0.4)
    ax.grid(alpha=0.3)
    legend_outside(ax)


def plot_aa(
    curves: Mapping[str, Any],
    replacement_tasks: Sequence[int],
    path: str | os.PathLike[str],
    title: str = "AA$_t$: mean accuracy over all model pairs up to task t",
    no_replacement: Mapping[str, Any] | None = None,
    no_replacement_title: str = "without replacements",
) -> None:
    """AA_t against t = 1..T for every method (the paper's Figure 4), saved as PNG.

    ``curves`` maps a method to its AA list, or to ``(mean, std)`` over seeds, drawn as a
    shaded band. Replacements (zero-based task ids) get a gold star on each curve and, after
    the first task, a dashed vertical line. ``no_replacement`` adds a second panel with the
    same methods run without replacements, the paper's comparison of the two scenarios.
    """
    if not curves:
        raise ValueError("plot_aa: no curves to plot")
    panels = 2 if no_replacement else 1
    fig = new_figure(6.0 * panels, 4.2)
    ax = fig.add_subplot(1, panels, 1)
    _draw_task_curves(ax, curves, sorted(set(replacement_tasks)), title)
    if no_replacement:
        ax2 = fig.add_subplot(1, panels, 2, sharey=ax)
        _draw_task_curves(
            ax2, no_replacement, [0] if 0 in replacement_tasks else [], no_replacement_title
        )
    fig.tight_layout()
    save(fig, path)


def plot_plasticity(
    aa: Mapping[str, Any],
    local: Mapping[str, Any],
    replacement_tasks: Sequence[int],
    path: str | os.PathLike[str],
    chance: Sequence[float] | None = None,
    seeds_note: str = "",
) -> None:
    """Compatibility and plasticity per task, side by side, saved as PNG.

    Left: AA_t (the mean of the compatibility matrix up to task t). Right: the local-class
    accuracy of each task model on test images of the local classes seen so far, with the
    chance level (1 / classes seen): how much the local learner learned. A flat AA_t next to
    a local accuracy at chance means the model kept compatibility by not moving.
    ``aa`` and ``local`` map a method to a list or to ``(mean, std)`` over seeds.
    """
    if not aa and not local:
        raise ValueError("plot_plasticity: no curves to plot")
    reps = sorted(set(replacement_tasks))
    fig = new_figure(11.0, 4.2)
    ax1 = fig.add_subplot(1, 2, 1)
    _draw_task_curves(ax1, aa, reps, f"compatibility: AA$_t${seeds_note}")
    ax2 = fig.add_subplot(1, 2, 2)
    _draw_task_curves(
        ax2,
        local,
        reps,
        f"plasticity: local-class accuracy{seeds_note}",
        ylabel="accuracy on the local classes seen so far (%)",
        chance=chance,
    )
    ax2.set_ylim(0, 100)
    fig.tight_layout()
    save(fig, path)
