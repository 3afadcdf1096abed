"""Checks on drawn figures shared by the plot tests: colours in the PNG, legend placement."""

from __future__ import annotations

import numpy as np

GOLD = np.array([0xB8, 0x86, 0x0B]) / 255.0  # the replacement boundary colour


def gold_pixels(img: np.ndarray) -> int:
    return int((np.abs(img[..., :3] - GOLD).max(axis=-1) < 0.06).sum())


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def assert_legends_outside(fig) -> int:
    """No legend of ``fig`` overlaps the plotting area of any of its axes (so it covers no
    curve and no cell); returns how many legends were checked."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    legends += list(fig.legends)
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>" or not ax.get_visible():
                continue
            assert not _overlaps(box, ax.get_window_extent(renderer)), (
                [t.get_text() for t in leg.get_texts()],
                ax.get_title(),
            )
    return len(legends)
