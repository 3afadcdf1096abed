"""The compatibility matrix plots: one matrix (the paper's Figure 5) or several side by side.

Each cell shows its accuracy C[i][j] and is coloured by C[i][j] - C[j][j], the quantity the
compatibility criterion judges, on a red-white-blue scale centred at zero; one scale per
figure, and the report gives every figure the same one. Matrices are stored zero-based;
tick labels are one-based, ``*`` marking a replacement model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .metrics_file import Matrix, lower_triangle, resolve_violations
from .style import REPLACEMENT_COLOR, VIOLATION_EDGE, model_labels, new_figure, save

__all__ = [
    "BOUNDARY_LW",
    "GAP_LABEL",
    "MAX_CELL_TEXT_T",
    "gap_limit",
    "matrix_figure",
    "matrix_gaps",
    "plot_matrices_grid",
    "plot_matrix",
]

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


def matrix_gaps(c: np.ndarray) -> np.ndarray:
    """``C[i][j] - C[j][j]`` of a lower-triangular matrix (NaN above the diagonal): how much
    query model i gains over gallery model j's own self-test, the quantity the criterion
    C[i][j] > C[j][j] judges; the diagonal is 0."""
    return c - np.diag(c)[None, :]


def gap_limit(matrices: Iterable[Matrix | np.ndarray]) -> float:
    """The half-range (percentage points) of one colour scale centred at zero for every
    matrix given: the largest |C[i][j] - C[j][j]|, at least 1 pp, rounded up to whole pp."""
    worst = 0.0
    for m in matrices:
        g = matrix_gaps(lower_triangle(m))
        if np.isfinite(g).any():
            worst = max(worst, float(np.nanmax(np.abs(g))))
    return float(max(1.0, math.ceil(worst)))


GAP_LABEL = "C[i][j] − C[j][j] (pp): red ≤ 0 breaks the criterion, blue > 0 keeps it"


def _draw_matrix(
    fig,
    ax,
    c: np.ndarray,
    viol: set[tuple[int, int]],
    title: str,
    replacement_tasks: Sequence[int],
    limit: float,
    colorbar: bool = True,
):
    """Cells coloured by C[i][j] - C[j][j] on a diverging scale from -limit to +limit
    (white at zero, the diagonal), each printed with its accuracy C[i][j]."""
    from matplotlib.patches import Rectangle

    t = c.shape[0]
    gaps = np.ma.masked_invalid(matrix_gaps(c))
    im = ax.imshow(gaps, cmap=_cmap(), vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_facecolor("white")
    style = _cell_text_style(t)
    lw = 2.0 if t <= 12 else 1.2
    for i in range(t):
        for j in range(i + 1):
            bad = (i, j) in viol
            if bad:  # hatched and outlined; the face stays clear so the colour shows how bad
                ax.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        facecolor="none",
                        edgecolor=VIOLATION_EDGE,
                        hatch="//",
                        linewidth=lw,
                        zorder=3,
                    )
                )
            if style is not None:
                decimals, size = style
                strong = abs(float(gaps[i, j])) / limit > 0.6
                ax.text(
                    j,
                    i,
                    f"{c[i, j]:.{decimals}f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if strong else "black",
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
        cb.set_label(GAP_LABEL, fontsize=8)
    return im


def _cmap():
    from matplotlib import colormaps

    # Diverging red-white-blue: the sign of C[i][j] - C[j][j] is what the criterion judges.
    return colormaps["RdBu"]


def _legend_handles(replacement_tasks: Sequence[int], t: int) -> list:
    """Key to the marks of a matrix plot (none for one model: nothing can violate)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if t == 1:
        return []
    handles = [
        Patch(
            facecolor="white",
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


def matrix_figure(
    matrix: Matrix | np.ndarray,
    violations: Iterable[Any] | None,
    title: str,
    replacement_tasks: Sequence[int] = (),
    limit: float | None = None,
):
    """The figure of :func:`plot_matrix`, unsaved (experiment tracking logs it as an image)."""
    c = lower_triangle(matrix)
    viol = resolve_violations(c, violations)
    reps = sorted(set(replacement_tasks))
    side = _matrix_side(c.shape[0])
    fig = new_figure(side + 1.2, side + 0.6)
    ax = fig.add_subplot(1, 1, 1)
    _draw_matrix(fig, ax, c, viol, title, reps, limit or gap_limit([c]))
    handles = _legend_handles(reps, c.shape[0])
    if handles:  # under the axes, where it can hide no cell
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            fontsize=8,
            frameon=False,
        )
    return fig


def plot_matrix(
    matrix: Matrix | np.ndarray,
    violations: Iterable[Any] | None,
    title: str,
    path: str | os.PathLike[str],
    replacement_tasks: Sequence[int] = (),
    limit: float | None = None,
) -> None:
    """Heat map of one compatibility matrix (the paper's Figure 5), saved as PNG at ``path``.

    Rows are query models, columns gallery models, numbered from 1; the upper triangle is
    blank. Each cell shows its accuracy C[i][j] and is coloured by C[i][j] - C[j][j] on a
    red-white-blue scale centred at zero, from ``-limit`` to ``+limit`` percentage points
    (default: this matrix's :func:`gap_limit`; give the same limit to every figure of a
    report and their colours compare). Cells that break the criterion are hatched with a red
    outline; replacement models (zero-based ``replacement_tasks``) are marked with ``*`` and
    set in bold, with dashed lines where a new lineage starts. ``violations=None``
    recomputes them from the matrix.
    """
    save(matrix_figure(matrix, violations, title, replacement_tasks, limit), path)


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
    limit: float | None = None,
) -> None:
    """Several methods' matrices side by side on one colour scale (the paper's Figure 5).

    ``methods`` maps a name to ``{"matrix", "violations"}`` (a metrics.json method entry
    works as is), a ``(matrix, violations)`` pair, or a bare matrix. One scale of
    C[i][j] - C[j][j] centred at zero (``limit``, default: the largest gap of any of them)
    makes a collapse in one method visible next to another's compatible block.
    """
    if not methods:
        raise ValueError("plot_matrices_grid: no methods to plot")
    items = []
    for name, value in methods.items():
        matrix, violations = _unpack_method(value)
        c = lower_triangle(matrix, name=f"{name} matrix")
        items.append((name, c, resolve_violations(c, violations)))
    limit = limit or gap_limit(c for _, c, _ in items)
    t = max(c.shape[0] for _, c, _ in items)
    reps = sorted(set(replacement_tasks))
    ncols = min(len(items), 3)
    nrows = math.ceil(len(items) / ncols)
    side = _matrix_side(t)
    fig = new_figure(side * ncols + 1.0, side * nrows + 0.8)
    axes = [fig.add_subplot(nrows, ncols, k + 1) for k in range(len(items))]
    im = None
    for ax, (name, c, viol) in zip(axes, items, strict=True):
        im = _draw_matrix(fig, ax, c, viol, name, reps, limit, colorbar=False)
    fig.subplots_adjust(wspace=0.3, hspace=0.45)
    cb = fig.colorbar(im, ax=axes, fraction=0.025, pad=0.03)
    cb.set_label(GAP_LABEL, fontsize=8)
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
