"""Anchors: images whose OLD features the successor is trained to keep (``--anchor DATA``).

A service holds its gallery, labelled or not. A successor that learns new classes moves
them away from where OLD embedded them (the new classes' gallery items were embedded by OLD
too, wherever OLD put them), so NEW's queries no longer find them. An anchor set asks NEW
to keep OLD's features on those very images, through the method's old-model term, with no
class label needed:

- ``term="fd"`` (the default): feature distillation, ``1 - cos(NEW(x), OLD(x))`` (the FD
  method's old-model term), whatever the method: it asks for OLD's very feature;
- ``term="method"``: the method's own old-model term; for methods whose term is HOC's
  contrastive loss (``hoc``, ``etf-hoc``) that loss on the anchor batch, each anchor its own
  class (its positive is OLD's feature of the same image, its negatives OLD's features of
  the other anchors), which only asks that each anchor be nearer its own OLD feature than
  the other anchors'; for every other method feature distillation.

Measured on the worked example's more-classes update (examples/upgrade/README.md): HOC's
contrastive term on the anchors moved the features more, not less; distillation kept them.

Each training step takes the next anchor batch (the training batch's size, augmented as the
training images are) of shuffled passes over the anchors, so every anchor is used once per
pass, and adds ``weight x`` the term to the method's loss. The anchors are an in-memory set
or read from their files (:mod:`compatkit.data.sources`); both give the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import ImageSet, augment
from ..data.sources import BatchSource, as_source
from ..errors import DataError
from ..losses import hoc_loss
from ..methods import Method, StepInputs, TaskContext

__all__ = ["AnchorOptions", "AnchoredMethod"]


@dataclass
class AnchorOptions:
    weight: float = 1.0
    """Weight of the anchor term next to the method's loss."""
    batch_size: int = 128
    pad: int = 4
    flip: bool = True
    mu: float = 10.0
    """HOC's inverse temperature, when the term is HOC's."""
    term: str = "fd"
    """``fd`` (cosine distillation) or ``method`` (the method's old-model term)."""


class AnchoredMethod(Method):
    """``inner``'s loss plus the anchor term (see the module docstring); same head, same
    needs, so the trainer runs it as it runs ``inner``."""

    def __init__(
        self, inner: Method, anchors: ImageSet | BatchSource, opts: AnchorOptions, seed: int
    ) -> None:
        super().__init__(inner.cfg)
        self.inner, self.anchors, self.opts, self.seed = inner, anchors, opts, seed
        self.name = inner.name
        self.head = inner.head
        self.needs_old = True
        hoc = inner.name in ("hoc", "etf-hoc") and opts.term == "method"
        self.form = "hoc" if hoc else "fd"
        self.ctx: TaskContext | None = None

    def begin_task(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.inner.begin_task(ctx)
        self.gen = torch.Generator(device=ctx.device).manual_seed(self.seed)
        self._batches = self._passes(as_source(self.anchors).to(ctx.device))

    def _passes(self, source: BatchSource) -> Iterator[torch.Tensor]:
        """Anchor batches of one shuffled pass after another, without end."""
        while True:
            got = False
            for images, _ in source.batches(None, self.opts.batch_size, self.gen):
                got = True
                yield images
            if not got:
                raise DataError("--anchor: fewer than two anchor images could be read")

    def anchor_term(self) -> torch.Tensor:
        ctx, o = self.ctx, self.opts
        images = next(self._batches)
        x = ctx.normalize(augment(images, o.pad, o.flip, self.gen))
        new = ctx.model.features(x)
        with torch.no_grad():
            old = ctx.old_model.features(x).float()
        if self.form == "hoc":
            own = torch.arange(len(images), device=new.device)  # each anchor its own class
            return hoc_loss(new.float(), own, old, o.mu)
        return (1.0 - (F.normalize(new.float(), dim=1) * F.normalize(old, dim=1)).sum(1)).mean()

    def loss(self, step: StepInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, parts = self.inner.loss(step)
        term = self.anchor_term()
        return total + self.opts.weight * term, {**parts, "anchor": term.detach()}
