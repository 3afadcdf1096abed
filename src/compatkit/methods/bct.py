"""BCT and BCT-ER: backward-compatible training through the old classifier ("influence loss").

Paper: Shen, Xiong, Xia & Soatto, "Towards Backward-Compatible Representation
Learning", CVPR 2020, Eq. 3: the new embedding phi_new is trained with

    L = L_CE(w_new, phi_new) + lambda * L_CE(w_old, phi_new),

where the second term, the influence loss, feeds the *new* features to the
*frozen old classifier* w_old, so the new features must stay where the old
classifier expects each class. Shen et al. also train on classes the old model
never saw: they extend w_old with one synthesised row per new class, the mean
of the old model's features of that class.

How it maps onto this code:

- ``old_rule = "previous"``: the old classifier is always the previous task's
  model, also at a replacement (where it is the model being replaced out), since
  the influence loss needs the classifier whose features are in the gallery.
- The old head is applied as ``old_model.head(new_features)``; the old model
  is frozen by the trainer, so the gradient reaches the new features only.
- Old-head targets come from the old model's own class map
  (``old_model.targets``); its logits cover every row of its head (a learnable
  head may have a different number of rows than the new one).
- ``new_classes = "synthesise"`` (default, Shen et al.): samples of classes the
  old model does not know use synthesised rows. The task's images are not
  handed to ``begin_task``, so each synthesised row is the running mean of the
  old model's (un-normalised) features of that class over the batches seen so
  far in the task, updated before the loss (every class in the batch then has
  a row; rows of classes not seen yet are left out of the softmax). After one
  epoch it is the paper's mean over the task's (augmented) images. The
  running mean is per process (not synchronised across data-parallel ranks).
- ``new_classes = "skip"``: the influence term uses only samples of classes the
  old model knows (the reading of docs/method.md §3, the baselines), averaged over those; it
  is 0 in a batch without any. Without rehearsal (``bct``) a batch then holds
  only new classes and the term is 0 after task 0: hence the default.
- An old model pre-trained elsewhere knows no local class: with ``skip`` the
  term is 0; with ``synthesise`` every class uses a synthesised row (its own
  provider rows stay in the softmax as competitors).
- Feature sizes: w_old is a ``(rows_old, d_old)`` matrix, so BCT needs the new
  features to have the old dimension by definition; the runner refuses a pair
  of models with different ``feat_dim``, and this loss raises if it ever sees
  one. Shen et al. add a learned transformation for that case only in their
  extension; it is not implemented.

``bct`` trains without the rehearsal memory (``uses_memory = False``), as BCT
was proposed; ``bct-er`` is the same loss with the memory (the "BCT-ER" of the
paper's figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import cross_entropy
from .base import Method, StepInputs, TaskContext, register_method

__all__ = ["BCT", "BCTER", "BCT_NEW_CLASSES"]

BCT_NEW_CLASSES = ("synthesise", "skip")


@register_method
class BCT(Method):
    name = "bct"
    head = "learnable"
    needs_old = True
    uses_memory = False
    old_rule = "previous"
    paper = (
        "Shen et al., Towards Backward-Compatible Representation Learning, CVPR 2020, "
        "Eq. 3 (influence loss; synthesised old-classifier rows for new classes)"
    )

    @dataclass
    class Config:
        lam: float = 1.0
        """Weight lambda of the influence loss in Eq. 3 (Shen et al. use 1)."""
        new_classes: str = "synthesise"
        """Samples of classes the old model does not know: ``synthesise`` a row from the mean
        old feature (Shen et al.) or ``skip`` them (influence on known classes only)."""

        def __post_init__(self) -> None:
            if self.lam < 0:
                raise ValueError(f"bct.lam must be >= 0, got {self.lam}")
            if self.new_classes not in BCT_NEW_CLASSES:
                raise ValueError(
                    f"bct.new_classes must be one of {BCT_NEW_CLASSES}, got {self.new_classes!r}"
                )

    def begin_task(self, ctx: TaskContext) -> None:
        """Build label -> old-row and label -> synthesised-slot tables; reset the running means."""
        super().begin_task(ctx)
        old = ctx.old_model
        known = {int(c): old.class_map.local[int(c)] for c in ctx.old_classes} if old else {}
        # Every label a batch may hold: this task's classes and the memory's.
        labels = {int(c) for c in ctx.new_classes}
        if ctx.memory_labels is not None:
            labels |= {int(c) for c in ctx.memory_labels.unique().tolist()}
        unknown = sorted(labels - set(known))
        size = max(labels | set(known) | {0}) + 1
        old_row = torch.full((size,), -1, dtype=torch.long)
        for c, r in known.items():
            old_row[c] = r
        slot_of = torch.full((size,), -1, dtype=torch.long)
        slot_of[torch.tensor(unknown, dtype=torch.long)] = torch.arange(len(unknown))
        self.old_row = old_row.to(ctx.device)
        self.slot_of = slot_of.to(ctx.device)
        self.synth_sum: torch.Tensor | None = None  # (slots, d): sum of old features per class
        self.synth_count = torch.zeros(len(unknown), device=ctx.device)  # images seen per slot

    def _lookup(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Old-head row (-1: unknown to the old model) and synthesised slot of each label."""
        size = len(self.old_row)
        inside = labels < size
        idx = labels.clamp(max=size - 1)
        old_row = torch.where(inside, self.old_row.to(labels.device)[idx], -1)
        slot = torch.where(inside, self.slot_of.to(labels.device)[idx], -1)
        # One host sync per batch, to name a wrong label instead of indexing out of range.
        if bool(((old_row < 0) & (slot < 0)).any()):
            bad = sorted(set(labels[(old_row < 0) & (slot < 0)].tolist()))
            raise ValueError(
                f"bct: labels {bad} are neither old classes nor this task's or the memory's"
            )
        return old_row, slot

    def _synthesised_rows(self, slot: torch.Tensor, old_feat: torch.Tensor) -> torch.Tensor:
        """Fold this batch's old features into the running class means; return ``(slots, d)``."""
        unknown = slot >= 0
        if self.synth_sum is None:
            self.synth_sum = old_feat.new_zeros(len(self.synth_count), old_feat.shape[1]).float()
        self.synth_count = self.synth_count.to(old_feat.device)
        self.synth_sum.index_add_(0, slot[unknown], old_feat[unknown].detach().float())
        self.synth_count.index_add_(0, slot[unknown], unknown[unknown].float())
        return self.synth_sum / self.synth_count.clamp_min(1.0).unsqueeze(1)

    def influence(self, step: StepInputs) -> torch.Tensor:
        """The influence loss L_CE(w_old, phi_new) of Eq. 3 on this batch."""
        old_model = self.ctx.old_model
        f = step.out.features.float()
        if old_model.head.feat_dim != f.shape[1]:
            raise ValueError(
                f"bct: the old classifier takes {old_model.head.feat_dim}-d features, the new "
                f"model gives {f.shape[1]}-d; BCT needs one feature size"
            )
        old_row, slot = self._lookup(step.labels)
        logits = old_model.head(f)  # (B, rows_old); the old head is frozen: grad reaches f only
        known = old_row >= 0
        if self.cfg.new_classes == "skip":
            # Mean over the known samples without a host sync; 0 when there are none.
            per = F.cross_entropy(logits, old_row.clamp_min(0), reduction="none")
            return (per * known).sum() / known.sum().clamp_min(1)
        synth = self._synthesised_rows(slot, step.old.features)
        extra = (f @ synth.t()).masked_fill(self.synth_count == 0, float("-inf"))
        targets = torch.where(known, old_row, logits.shape[1] + slot)
        return F.cross_entropy(torch.cat([logits, extra], dim=1), targets)

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = cross_entropy(step.out.logits, step.targets)
        if step.old is None or self.ctx.old_model is None:
            return ce, {"ce": ce.detach()}
        infl = self.influence(step)
        return ce + self.cfg.lam * infl, {"ce": ce.detach(), "influence": infl.detach()}


@register_method
class BCTER(BCT):
    name = "bct-er"
    uses_memory = True
    paper = BCT.paper + "; with the rehearsal memory (BCT-ER)"
