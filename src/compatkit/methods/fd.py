"""FD and d-Simplex-FD: feature distillation towards the frozen old model.

Paper: Biondi, Pernici, Bruni, Del Bimbo, "CL2R: Compatible Lifelong Learning
Representations", ACM TOMM 2023: the baseline adds to the classification loss
a distance between the L2-normalised new and old features of the same images,
``L = L_CE + lambda * L_FD`` with ``L_FD = 1 - cos(phi_new(x), phi_old(x))``
averaged over the rehearsal-memory samples of the batch. The d-Simplex-FD
variant (compared in Biondi et al., CVPR 2024, and its journal extension) is the
same loss with the d-Simplex fixed classifier instead of a learnable one.

Choices:

- ``distance = "cosine"``: ``1 - cos`` (CL2R); ``"l2"``: the squared Euclidean
  distance between the normalised features, ``||n_new - n_old||^2 = 2 - 2 cos``,
  i.e. twice the cosine form (kept so both common FD variants are one switch).
- ``only_memory = True``: the memory samples of a batch are recognised by their
  labels, the classes the old model was trained on locally
  (``TaskContext.old_classes``): exactly the memory classes, since a task's
  classes are new. The term is the mean over those samples and 0 in a batch
  without any. When the old model knows no local class (task 0, or an old
  model pre-trained elsewhere, which the reference rule uses at a replacement)
  there is no memory to single out, and the distance applies to every sample:
  that is what ties the fine-tuned model to the model it starts from.
- ``only_memory = False``: every sample of the batch.
- The old features are detached; the feature sizes must match (the runner
  refuses other pairs and this loss raises if it sees one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import cross_entropy
from .base import Method, StepInputs, TaskContext, register_method

__all__ = ["FD", "FD_DISTANCES", "DSimplexFD", "feature_distance"]

FD_DISTANCES = ("cosine", "l2")


def feature_distance(
    new_features: torch.Tensor, old_features: torch.Tensor, distance: str = "cosine"
) -> torch.Tensor:
    """Per-sample distance ``(B,)`` between L2-normalised new and (detached) old features."""
    if distance not in FD_DISTANCES:
        raise ValueError(f"unknown FD distance {distance!r}; choose one of {FD_DISTANCES}")
    if new_features.shape != old_features.shape:
        raise ValueError(
            f"FD needs old and new features of one shape, got {tuple(old_features.shape)} (old) "
            f"and {tuple(new_features.shape)} (new); the old model's feature dimension differs"
        )
    new = F.normalize(new_features.float(), dim=1)
    old = F.normalize(old_features.detach().float(), dim=1)
    if distance == "cosine":
        return 1.0 - (new * old).sum(dim=1)
    return (new - old).pow(2).sum(dim=1)


@register_method
class FD(Method):
    name = "fd"
    head = "learnable"
    needs_old = True
    paper = "Biondi et al., CL2R, ACM TOMM 2023 (feature distillation, 1 - cosine on memory)"

    @dataclass
    class Config:
        distance: str = "cosine"
        """``cosine`` (1 - cos, CL2R) or ``l2`` (squared L2 of normalised features = 2 - 2 cos)."""
        lam: float = 1.0
        """Weight of the distillation term (dimensionless; CL2R weighs it 1)."""
        only_memory: bool = True
        """Distil memory samples only (labels the old model knows; every sample if it knows
        none), as CL2R; False: every sample of the batch."""

        def __post_init__(self) -> None:
            if self.distance not in FD_DISTANCES:
                raise ValueError(
                    f"fd.distance must be one of {FD_DISTANCES}, got {self.distance!r}"
                )
            if self.lam < 0:
                raise ValueError(f"fd.lam must be >= 0, got {self.lam}")

    def begin_task(self, ctx: TaskContext) -> None:
        super().begin_task(ctx)
        self.old_classes = torch.tensor(
            sorted(int(c) for c in ctx.old_classes), dtype=torch.long, device=ctx.device
        )

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = cross_entropy(step.out.logits, step.targets)
        if step.old is None:
            return ce, {"ce": ce.detach()}
        dist = feature_distance(step.out.features, step.old.features, self.cfg.distance)
        if self.cfg.only_memory and len(self.old_classes):
            mask = torch.isin(step.labels, self.old_classes.to(step.labels.device)).float()
            fd = (dist * mask).sum() / mask.sum().clamp_min(1.0)  # mean over memory; 0 if none
        else:
            fd = dist.mean()
        return ce + self.cfg.lam * fd, {"ce": ce.detach(), "fd": fd.detach()}


@register_method
class DSimplexFD(FD):
    name = "dsimplex-fd"
    head = "simplex"
    paper = FD.paper + "; with the d-Simplex fixed classifier (Biondi et al., CVPR 2024)"
