"""The run report's plots: AA_t (the paper's Figure 4) and plasticity beside it (local-class
accuracy per task); the compatibility matrices (Figure 5) are drawn by
:mod:`~compatkit.report.matrix_plots` and exported here too.

Index conventions: matrices are stored zero-based; everything shown to a reader (tick labels,
legends) is one-based, ``model t`` being the model after task t, ``*`` a replacement model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .matrix_plots import (
    MAX_CELL_TEXT_T,
    gap_limit,
    matrix_figure,
    matrix_gaps,
    plot_matrices_grid,
    plot_matrix,
)
from .style import REPLACEMENT_COLOR, REPLACEMENT_STAR, legend_outside, new_figure, save

__all__ = [
    "AA_CHANCE_LABEL",
    "MAX_CELL_TEXT_T",
    "gap_limit",
    "matrix_figure",
    "matrix_gaps",
    "plot_aa",
    "plot_matrices_grid",
    "plot_matrix",
    "plot_plasticity",
]

AA_CHANCE_LABEL = "chance (1 / gallery classes)"


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
    chance: Sequence[float] | float | None = None,
    chance_label: str = "chance (1 / classes seen)",
    starts: Mapping[str, Any] | None = None,
) -> None:
    """One line per method against task t = 1..T (mean, with a ±std band over seeds).

    ``chance``: a level per task, or one level for all (a dotted grey line); ``starts``:
    per method, the same quantity for the model each task started from (dashed, in the
    method's colour), so the step from a task's start to its end is what the task added.
    """
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
        if starts is not None and starts.get(name) is not None:
            s_mean, _ = _curve(starts[name])
            ax.plot(
                np.arange(1, len(s_mean) + 1),
                s_mean,
                ls="--",
                marker="x",
                ms=4,
                lw=1.2,
                color=color,
                label=f"{name}: at the task's start",
            )
    if chance is not None:
        if np.ndim(chance) == 0:
            ax.axhline(float(chance), ls=":", lw=1.4, color="0.35", label=chance_label)
        else:
            ts = np.arange(1, len(chance) + 1)
            ax.plot(ts, chance, ls=":", lw=1.4, color="0.35", label=chance_label)
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
    chance: float | None = None,
) -> None:
    """AA_t against t = 1..T for every method (the paper's Figure 4), saved as PNG.

    ``curves`` maps a method to its AA list, or to ``(mean, std)`` over seeds, drawn as a
    shaded band. Replacements (zero-based task ids) get a gold star on each curve and, after
    the first task, a dashed vertical line. ``no_replacement`` adds a second panel with the
    same methods run without replacements, the paper's comparison of the two scenarios.
    ``chance``: the accuracy (%) of a random guess among the gallery's classes, a dotted line.
    """
    if not curves:
        raise ValueError("plot_aa: no curves to plot")
    panels = 2 if no_replacement else 1
    fig = new_figure(6.0 * panels, 4.2)
    ax = fig.add_subplot(1, panels, 1)
    label = AA_CHANCE_LABEL
    _draw_task_curves(
        ax, curves, sorted(set(replacement_tasks)), title, chance=chance, chance_label=label
    )
    if no_replacement:
        ax2 = fig.add_subplot(1, panels, 2, sharey=ax)
        reps = [0] if 0 in replacement_tasks else []
        _draw_task_curves(
            ax2, no_replacement, reps, no_replacement_title, chance=chance, chance_label=label
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
    aa_chance: float | None = None,
    starts: Mapping[str, Any] | None = None,
) -> None:
    """Compatibility and plasticity per task, side by side, saved as PNG.

    Left: AA_t (the mean of the compatibility matrix up to task t), with ``aa_chance`` (a
    random guess among the gallery's classes). Right: the local-class accuracy of each task
    model on test images of the local classes seen so far, with the chance level (1 / classes
    seen), and dashed, the accuracy of the model each task started from (``starts``): how
    much the local learner learned, and how much of it each task added. A flat AA_t next to
    a local accuracy at chance means the model kept compatibility by not moving. ``aa``,
    ``local`` and ``starts`` map a method to a list or to ``(mean, std)`` over seeds.
    """
    if not aa and not local:
        raise ValueError("plot_plasticity: no curves to plot")
    reps = sorted(set(replacement_tasks))
    fig = new_figure(11.0, 4.2)
    ax1 = fig.add_subplot(1, 2, 1)
    _draw_task_curves(
        ax1,
        aa,
        reps,
        f"compatibility: AA$_t${seeds_note}",
        chance=aa_chance,
        chance_label=AA_CHANCE_LABEL,
    )
    ax2 = fig.add_subplot(1, 2, 2)
    _draw_task_curves(
        ax2,
        local,
        reps,
        f"plasticity: local-class accuracy{seeds_note}",
        ylabel="accuracy on the local classes seen so far (%)",
        chance=chance,
        starts=starts,
    )
    ax2.set_ylim(0, 100)
    fig.tight_layout()
    save(fig, path)
