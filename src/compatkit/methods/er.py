"""ER: experience replay with a learnable, growing classifier and cross-entropy.

The lower bound of the compatibility literature (Chaudhry et al., "On Tiny
Episodic Memories in Continual Learning", 2019; the "ER baseline" of
docs/reproduce.md): L = L_CE on half-new, half-memory batches, no term that
ties the new model to the old one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import cross_entropy
from .base import Method, StepInputs, register_method


@register_method
class ER(Method):
    name = "er"
    head = "learnable"
    needs_old = False
    paper = "Chaudhry et al. 2019 (experience replay), cross-entropy only"

    @dataclass
    class Config:
        pass

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = cross_entropy(step.out.logits, step.targets)
        return ce, {"ce": ce.detach()}
