"""CVS: continual visual search with backward-consistent feature embeddings.

Paper: Wan, Chen, Wu & Chen, "Continual Learning for Visual Search with
Backward Consistent Feature Embedding", CVPR 2022. Its loss has three terms,
all on L2-normalised embeddings, here in the simplified form listed in
docs/method.md §3, the baselines (the one used as a baseline by Biondi et al., CVPR 2024):

``L = L_NS + w_triplet * L_tri + w_centre * L_centre``

- **Intra-session discrimination, L_NS**: normalised-softmax cross-entropy
  (cosine classifier): logits ``s * cos(z_i, w_c)`` with the features and the
  learnable head's rows both normalised, scale ``s``.
- **Neighbour-session model coherence, L_tri**: a triplet between the two
  models on two samples and three embeddings. Anchor: the new feature of
  sample i; positive: the old feature of the same sample; negative: the
  hardest old feature of another class in the batch (the one most similar to
  the anchor). With the cosine distance d = 1 - cos,
  ``L_tri,i = max(0, d(new_i, old_i) - d(new_i, old_j*) + m)``,
  averaged over the samples that have a negative (0 if none has: a batch of
  one class).
- **Inter-session data coherence, L_centre**: the paper's "historically
  concentrated attractors" are class summaries of earlier sessions. Here they
  are old class centres, computed once per task in ``begin_task`` with the old
  model on the rehearsal memory: per memory class, the mean of the normalised
  old features, re-normalised. ``L_centre,i = 1 - cos(new_i, centre_{y_i})``,
  averaged over the samples whose class has a centre (0 if none). No memory or
  no old model: no centres and no such term. The centres need no class
  knowledge in the old model, so an old model pre-trained elsewhere gives them
  too (from its own features of the memory images).

Not reproduced: the paper's memory-budget control and its use of centres from
every earlier session (here, only the current old model's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Method, StepInputs, TaskContext, register_method

__all__ = [
    "CVS",
    "centre_loss",
    "class_centres",
    "hardest_negative_triplet",
    "normalized_softmax_ce",
]


def normalized_softmax_ce(
    features: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float
) -> torch.Tensor:
    """Cross-entropy on cosine logits ``scale * <n(z_i), n(w_c)>`` (normalised softmax)."""
    logits = scale * F.normalize(features.float(), dim=1) @ F.normalize(weight.float(), dim=1).t()
    return F.cross_entropy(logits, targets)


def hardest_negative_triplet(
    new_features: torch.Tensor,
    old_features: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Mean triplet loss: anchor new_i, positive old_i, negative the closest other-class old_j.

    Cosine distances on L2-normalised features; the old features are detached.
    Samples with no other-class sample in the batch are left out of the mean.
    """
    new = F.normalize(new_features.float(), dim=1)
    old = F.normalize(old_features.detach().float(), dim=1)
    dist = 1.0 - new @ old.t()  # (B, B): d(new_i, old_j)
    other = labels.view(-1, 1) != labels.view(1, -1)
    neg = dist.masked_fill(~other, float("inf")).min(dim=1).values  # hardest = closest
    has_neg = other.any(dim=1)
    per = F.relu(dist.diagonal() - neg + margin).masked_fill(~has_neg, 0.0)
    return per.sum() / has_neg.sum().clamp_min(1)


@torch.no_grad()
def class_centres(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean of the normalised features of ``model`` on ``images``, re-normalised.

    Returns ``(classes, centres)``: the sorted classes ``(C,)`` and their unit centres
    ``(C, d)``. ``images`` is a uint8 batch turned into model input by ``normalize``.
    """
    was_training = model.training
    model.eval()  # BN running statistics, not batch statistics (the old model is in eval anyway)
    device = next(model.parameters()).device
    feats = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device))
        feats.append(F.normalize(model(x).features.float(), dim=1))
    model.train(was_training)
    f = torch.cat(feats)
    lab = labels.to(device).long()
    classes, inverse = torch.unique(lab, sorted=True, return_inverse=True)
    sums = f.new_zeros(len(classes), f.shape[1]).index_add_(0, inverse, f)
    return classes, F.normalize(sums, dim=1)


def centre_loss(
    new_features: torch.Tensor,
    labels: torch.Tensor,
    centre_lut: torch.Tensor,
    centres: torch.Tensor,
) -> torch.Tensor:
    """Mean of ``1 - cos(new_i, centre_{y_i})`` over samples whose class has a centre (else 0).

    ``centre_lut[y]`` is the row of class y in ``centres`` or -1 (no centre).
    """
    size = len(centre_lut)
    idx = torch.where(labels < size, centre_lut[labels.clamp(max=size - 1)], -1)
    has = idx >= 0
    new = F.normalize(new_features.float(), dim=1)
    cos = (new * centres[idx.clamp_min(0)]).sum(dim=1)
    return ((1.0 - cos) * has).sum() / has.sum().clamp_min(1)


@register_method
class CVS(Method):
    name = "cvs"
    head = "learnable"
    needs_old = True
    paper = (
        "Wan et al., Continual Learning for Visual Search with Backward Consistent Feature "
        "Embedding, CVPR 2022 (normalised softmax, old/new triplet, old class centres)"
    )

    @dataclass
    class Config:
        scale: float = 16.0
        """Scale s of the cosine logits (an inverse temperature; 16 is common for
        normalised softmax on small backbones)."""
        margin: float = 0.2
        """Triplet margin m, in cosine distance (1 - cos, range [0, 2])."""
        w_triplet: float = 1.0
        """Weight of the old/new triplet term."""
        w_centre: float = 1.0
        """Weight of the pull towards old class centres."""

        def __post_init__(self) -> None:
            if self.scale <= 0:
                raise ValueError(f"cvs.scale must be > 0, got {self.scale}")
            if self.margin < 0:
                raise ValueError(f"cvs.margin must be >= 0, got {self.margin}")
            if self.w_triplet < 0 or self.w_centre < 0:
                raise ValueError("cvs.w_triplet and cvs.w_centre must be >= 0")

    # Set by begin_task: label -> centre row (-1: none) and the (C, d) unit centres.
    centre_lut: torch.Tensor | None = None
    centres: torch.Tensor | None = None

    def begin_task(self, ctx: TaskContext) -> None:
        """Compute the old model's class centres on the rehearsal memory."""
        super().begin_task(ctx)
        self.centre_lut = self.centres = None
        if ctx.old_model is None or ctx.memory_images is None or ctx.memory_labels is None:
            return
        if len(ctx.memory_labels) == 0:
            return
        if ctx.normalize is None:
            raise ValueError("cvs: the task context has no normalize function for the memory")
        classes, centres = class_centres(
            ctx.old_model, ctx.memory_images, ctx.memory_labels, ctx.normalize
        )
        lut = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long, device=classes.device)
        lut[classes] = torch.arange(len(classes), device=classes.device)
        self.centre_lut, self.centres = lut, centres

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        f = step.out.features
        ns = normalized_softmax_ce(f, self.ctx.model.head.weight, step.targets, c.scale)
        parts = {"ns_ce": ns.detach()}
        total = ns
        if step.old is not None:
            if step.old.features.shape != f.shape:
                raise ValueError(
                    f"cvs needs old and new features of one shape, got "
                    f"{tuple(step.old.features.shape)} (old) and {tuple(f.shape)} (new)"
                )
            tri = hardest_negative_triplet(f, step.old.features, step.labels, c.margin)
            total = total + c.w_triplet * tri
            parts["triplet"] = tri.detach()
        if self.centres is not None:
            dev = f.device
            cen = centre_loss(f, step.labels, self.centre_lut.to(dev), self.centres.to(dev))
            total = total + c.w_centre * cen
            parts["centre"] = cen.detach()
        return total, parts
