"""A foreign model as the frozen old model of ``compatkit train --old``.

The successor V2 of a deployed model V1 that compatkit did not train lives in V1's feature
space: feature dimension d = V1's, V1's preprocessing (so V2 takes the same query pipeline),
and a head the method needs:

- a d-Simplex head of K = d + 1 vertices (``hoc``, ``cores``, ...): the classes of the data
  take vertices as in any first model, and the method's old-model term (HOC's contrastive
  term) ties V2's features to V1's;
- a learnable head (``er``, ``bct``, ``lwf``, ``fd``, ``cvs``), its rows started from V1's
  class means.

V1 has no classifier, which BCT (the old classifier applied to new features) and LwF (the
old logits) need: the documented substitute is the classifier of V1's **class means** (the
unit mean of V1's normalised features of each class of the training data, the classifier
Shen et al. synthesise for classes the old model never saw). An ETF head (its own frame,
not V1's space) is refused. V1 runs as it is (fp32, on the CPU for ONNX); from V2 on every
successor is a compatkit model, so adopting compatkit costs no backfill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageSet
from ..data.sources import BatchSource, as_source
from ..errors import ConfigError
from ..heads import build_head
from ..model import CompatModel, ModelOutput, ModelSpec, build_model
from ..simplex import ClassMap

__all__ = ["ForeignOld", "class_means", "foreign_successor", "named_model"]


class _ForeignBackbone(nn.Module):
    """A foreign model as a backbone: float batch in, its features out (no gradient)."""

    def __init__(self, fm) -> None:
        super().__init__()
        self.fm = fm
        self.out_dim = int(fm.feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fm(x).to(x.device)


class ForeignOld(CompatModel):
    """V1 in the shape the methods expect of an old model: ``features`` are V1's, ``head``
    the class-mean classifier, ``class_map`` the training data's classes by name."""

    def __init__(self, fm, names: dict[int, str], means: torch.Tensor) -> None:
        nn.Module.__init__(self)
        n, d = means.shape
        c = fm.preprocess.channels
        self.spec = ModelSpec(f"{fm.format}:{fm.name}", c, d, "learnable", n, junction=False)
        self.backbone = _ForeignBackbone(fm)
        self.junction = None
        self.head = build_head("learnable", n, d)
        with torch.no_grad():
            self.head.w.copy_(means)
        self.class_map = ClassMap(None)
        self.class_map.add_local(sorted(names))
        self.class_map.set_names(names)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> ModelOutput:
        f = self.features(x)
        return ModelOutput(f, self.head(f))


@torch.no_grad()
def class_means(fm, data: ImageSet | BatchSource, normalize, batch_size: int = 64) -> torch.Tensor:
    """``(classes, d)``: the unit mean of V1's unit features of each class of ``data`` (in
    memory or read from its files; a row of zeros for a class without images)."""
    sums = torch.zeros(len(data.classes), fm.feat_dim)
    for images, labels in as_source(data).ordered(batch_size):
        f = F.normalize(fm(normalize(images)), dim=1)
        sums.index_add_(0, labels.cpu(), f.cpu())
    return F.normalize(sums, dim=1)


def named_model(spec: ModelSpec, ids: dict[int, str]) -> CompatModel:
    """A fresh model of ``spec`` holding the classes ``ids`` (id -> name)."""
    try:
        model = build_model(spec)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None
    model.add_classes(sorted(ids), "local")
    model.class_map.set_names(ids)
    return model


def foreign_successor(
    fm, head: str, backbone: str, ids: dict[int, str], means: torch.Tensor
) -> CompatModel:
    """V2: a fresh compatkit model of V1's feature size with ``head`` (see the module notes)."""
    d = int(fm.feat_dim)
    if head == "etf":
        raise ConfigError(
            "head: an ETF head's frame is its own, not the foreign model's feature space; use a "
            "d-Simplex method (hoc) or a learnable-head one (bct, er, lwf, fd)"
        )
    k = d + 1 if head == "simplex" else len(ids)
    if head == "simplex" and max(ids) + 1 > k:
        raise ConfigError(
            f"a d-Simplex head in the foreign model's {d}-d space has K={k} vertices, too few "
            f"for {max(ids) + 1} classes; use a learnable-head method (--method bct)"
        )
    model = named_model(ModelSpec(backbone, fm.preprocess.channels, d, head, k), ids)
    if head == "learnable":
        with torch.no_grad():  # each class starts from V1's class mean (its old "row")
            for c in ids:
                model.head.w[model.class_map.local[c]] = means[c].to(model.head.w)
    return model
