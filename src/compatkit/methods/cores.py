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

from dataclasses import dataclass

import torch

from ..losses import cross_entropy
from .base import Method, StepInputs, register_method

__all__ = ["CoReS"]


@register_method
class CoReS(Method):
    name = "cores"
    head = "simplex"
    needs_old = False
    paper = "Biondi et al., CoReS: Compatible Representations via Stationarity, TPAMI 2023 (L_CE)"

    @dataclass
    class Config:
        pass

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = cross_entropy(step.out.logits, step.targets)
        return ce, {"ce": ce.detach()}
