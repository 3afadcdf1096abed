"""CoReS: compatible representations through stationarity alone.

Paper: Biondi, Pernici, Bruni & Del Bimbo, "CoReS: Compatible Representations
via Stationarity", IEEE TPAMI 2023. The features are trained with the plain
cross-entropy (the paper's classification loss, no term that involves the old
model) through a fixed classifier whose weights are the vertices of a
d-Simplex, so the class directions never move between models and the learned
representation is stationary, hence compatible. In this code that is
``L = L_CE`` with the ``simplex`` head (``compatkit.heads.SimplexHead``) and
rehearsal: d-Simplex-HOC (``hoc``) minus its HOC term.
"""

from __future__ import annotations

from .base import register_method
from .er import ER

__all__ = ["CoReS"]


@register_method
class CoReS(ER):
    """ER's loss (cross-entropy only) through the d-Simplex head."""

    name = "cores"
    head = "simplex"
    paper = "Biondi et al., CoReS: Compatible Representations via Stationarity, TPAMI 2023 (L_CE)"
