"""d-Simplex-HOC: the method of Biondi et al., CVPR 2024.

d-Simplex fixed classifier (stationary features) trained with Eq. 3,
``lambda * L_CE + (1 - lambda) * L_HOC``, where L_HOC is the contrastive
higher-order-dependency loss of Eq. 4 between the new model's features and the
frozen old model's features (``compatkit.losses``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import HOC_FORMS, hoc_total_loss
from .base import Method, StepInputs, register_method


@register_method
class HOC(Method):
    name = "hoc"
    head = "simplex"
    needs_old = True
    paper = "Biondi et al., CVPR 2024, Eq. 3 and Eq. 4"

    @dataclass
    class Config:
        lam: float = 0.1
        """Weight of L_CE in Eq. 3 (the reference uses 0.1: HOC carries 0.9)."""
        mu: float = 10.0
        """Scale of the cosine similarities in Eq. 4 (an inverse temperature; reference 10)."""
        form: str = "textbook"
        """``textbook`` InfoNCE or the authors' ``reference`` variant (see losses.py)."""

        def __post_init__(self) -> None:
            if self.form not in HOC_FORMS:
                raise ValueError(f"hoc.form must be one of {HOC_FORMS}, got {self.form!r}")
            if not 0.0 <= self.lam <= 1.0:
                raise ValueError(f"hoc.lam must lie in [0, 1], got {self.lam}")
            if self.mu <= 0:
                raise ValueError(f"hoc.mu must be > 0, got {self.mu}")

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        old = step.old.features if step.old is not None else None
        return hoc_total_loss(
            step.out.logits, step.targets, step.out.features, step.labels, old, c.lam, c.mu, c.form
        )
