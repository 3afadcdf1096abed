"""ce-l2: cross-entropy through the d-Simplex head plus an L2 pull of the new features
towards the frozen old model's features of the same images.

A teaching example of compatkit's method interface (docs/adding-a-method.md), not a method
of the literature: L = L_CE + lam * mean_i ||n_new(x_i) - n_old(x_i)||^2, with n the
L2-normalised feature, on every sample of the batch. lam = 0 is CoReS (cross-entropy only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compatkit.losses import cross_entropy
from compatkit.methods import Method, StepInputs, register_method


@register_method
class CEL2(Method):
    name = "ce-l2"
    head = "simplex"  # the d-Simplex fixed classifier: class y stays on its vertex
    needs_old = True  # the trainer runs the frozen old model on every batch
    paper = "compatkit example plugin (docs/adding-a-method.md)"

    @dataclass
    class Config:
        lam: float = 1.0
        """Weight of the L2 pull (dimensionless: squared distance of unit vectors, 0..4)."""

        def __post_init__(self) -> None:
            if self.lam < 0:
                raise ValueError(f"ce-l2.lam must be >= 0, got {self.lam}")

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = cross_entropy(step.out.logits, step.targets)
        if step.old is None:  # no old model (e.g. training a first model)
            return ce, {"ce": ce.detach()}
        new = F.normalize(step.out.features.float(), dim=1)
        old = F.normalize(step.old.features.detach().float(), dim=1)
        l2 = (new - old).pow(2).sum(dim=1).mean()
        return ce + self.cfg.lam * l2, {"ce": ce.detach(), "l2": l2.detach()}
