"""One figure style for every plot of compatkit (run report, paper figures, sweeps).

Plots use matplotlib's object API with the Agg canvas rather than ``pyplot``: no global
backend switch (a notebook user's backend is left alone), no figure registry to leak.
Legends of line plots go outside the axes, so they never cover a curve.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from ..runtime.files import atomic_write_bytes

__all__ = [
    "DPI",
    "REPLACEMENT_COLOR",
    "REPLACEMENT_STAR",
    "VIOLATION_EDGE",
    "legend_outside",
    "model_labels",
    "new_figure",
    "png_bytes",
    "save",
]

DPI = 120
LEGEND_GAP_PT = 34.0
"""Points between the bottom of an axes and a legend under it: tick labels and x label."""
VIOLATION_EDGE = "#c00000"  # dark red: the outline and hatching of a violating cell
REPLACEMENT_COLOR = "#b8860b"  # dark goldenrod: the paper's yellow markers, readable on white
REPLACEMENT_STAR = {
    "s": 90,
    "marker": "*",
    "color": "gold",
    "edgecolors": "black",
    "linewidths": 0.6,
}
"""``ax.scatter`` style of the star on a curve at a replacement model (the paper's marker)."""


def new_figure(width: float, height: float):
    """A Figure on the Agg canvas, outside pyplot (see the module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes, as :func:`save` would write it, and free its artists."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    fig.clear()
    return buf.getvalue()


def save(fig, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG (white background, tight box), atomically, and free its artists."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(p, png_bytes(fig))  # a reader never sees half a PNG


def legend_outside(ax, fontsize: float = 8, **kw) -> None:
    """The axes' legend under the axes, below its tick labels and x label, where it can
    cover no data.

    The gap is fixed in points (not in axes fractions), so it clears the x label whatever
    the height of the axes; ``bbox_inches="tight"`` at save time keeps it in the picture.
    """
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ncol = kw.pop("ncol", min(len(handles), 3))
    ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        borderaxespad=LEGEND_GAP_PT / fontsize,  # in units of the legend's font size
        fontsize=fontsize,
        ncol=ncol,
        frameon=False,
        **kw,
    )


def model_labels(idx: Sequence[int], replacement_tasks: Sequence[int]) -> list[str]:
    """One-based model labels with ``*`` on replacement models (the project's convention)."""
    reps = set(replacement_tasks)
    return [f"{k + 1}*" if k in reps else str(k + 1) for k in idx]
