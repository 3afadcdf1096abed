"""LwF: Learning without Forgetting, with a learnable, growing classifier.

Paper: Li & Hoiem, "Learning without Forgetting", TPAMI 2017, Sec. 3 and
Eq. 2: the loss on the old tasks is a cross-entropy between the old model's
recorded outputs and the new model's outputs on the *same* (new-task) images,
both softened by a temperature T,

    L_old = - sum_c  y'_o(c) log yhat'_o(c),
    y'_o  = softmax(old_logits / T),   yhat'_o = softmax(new_logits / T),

and the total loss is ``L_CE + alpha * L_old`` (the paper's lambda_o, 1 by default).

How it maps onto this code:

- The "old outputs" are the old model's logits on the classes it was trained
  on locally (``TaskContext.old_classes``). Each model has its own class-to-row
  map, so the columns are picked per model: the old classes' rows in the old
  head for the teacher, the same classes' rows in the new head for the student.
- The distillation runs on every sample of the batch (new data and memory), as
  in the paper, where it is applied to the new task's images.
- As in Eq. 2 there is no T^2 factor (Hinton et al. add one; ``alpha`` absorbs
  it). The value is a cross-entropy, so it does not reach 0 when the two
  distributions agree: it then equals the teacher's entropy (the gradient is
  the KL divergence's).
- An old model that knows no local class (a model pre-trained elsewhere, used
  as "old" at task 0 or at a replacement) has nothing to distil: the term is 0.
  Likewise with a single known class the softened distribution is the
  constant 1 and the term is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import cross_entropy
from .base import Method, StepInputs, TaskContext, register_method

__all__ = ["LwF", "kd_loss"]


def kd_loss(new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Li & Hoiem Eq. 2: mean over the batch of ``-sum softmax(old/T) * log_softmax(new/T)``.

    Args:
        new_logits: ``(B, C)`` student logits on the distilled classes (same column order).
        old_logits: ``(B, C)`` teacher logits; detached here (the teacher is frozen).
        temperature: T > 0; larger T softens both distributions.
    """
    if new_logits.shape != old_logits.shape:
        raise ValueError(
            f"KD needs logits of one shape, got {tuple(new_logits.shape)} (new) and "
            f"{tuple(old_logits.shape)} (old)"
        )
    p_old = F.softmax(old_logits.detach().float() / temperature, dim=1)
    log_q = F.log_softmax(new_logits.float() / temperature, dim=1)
    return -(p_old * log_q).sum(dim=1).mean()


@register_method
class LwF(Method):
    name = "lwf"
    head = "learnable"
    needs_old = True
    paper = "Li & Hoiem, Learning without Forgetting, TPAMI 2017, Eq. 2 (L_old with temperature)"

    # Head rows of the distilled classes, set by begin_task (None: nothing to distil).
    new_cols: torch.Tensor | None = None
    old_cols: torch.Tensor | None = None

    @dataclass
    class Config:
        temperature: float = 2.0
        """Softening temperature T of Eq. 2 (dimensionless; the paper uses 2)."""
        alpha: float = 1.0
        """Weight of the distillation term (the paper's lambda_o; 1 balances it with L_CE)."""

        def __post_init__(self) -> None:
            if self.temperature <= 0:
                raise ValueError(f"lwf.temperature must be > 0, got {self.temperature}")
            if self.alpha < 0:
                raise ValueError(f"lwf.alpha must be >= 0, got {self.alpha}")

    def begin_task(self, ctx: TaskContext) -> None:
        """Pick the distilled columns once per task: each old class's row in either head."""
        super().begin_task(ctx)
        self.new_cols = self.old_cols = None
        if ctx.old_model is None or not ctx.old_classes:
            return
        classes = torch.tensor(sorted(ctx.old_classes), dtype=torch.long)
        try:
            new_cols = ctx.model.targets(classes)
        except KeyError as e:
            raise ValueError(
                f"lwf: the new model has no head row for some classes the old model knows ({e}); "
                "the new model must keep every earlier class"
            ) from None
        self.new_cols = new_cols.to(ctx.device)
        self.old_cols = ctx.old_model.targets(classes).to(ctx.device)

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = cross_entropy(step.out.logits, step.targets)
        if step.old is None or self.new_cols is None or self.old_cols is None:
            return ce, {"ce": ce.detach()}
        new_cols = self.new_cols.to(step.out.logits.device)
        old_cols = self.old_cols.to(step.old.logits.device)
        kd = kd_loss(
            step.out.logits[:, new_cols],
            step.old.logits[:, old_cols].to(ce.device),
            self.cfg.temperature,
        )
        return ce + self.cfg.alpha * kd, {"ce": ce.detach(), "kd": kd.detach()}
