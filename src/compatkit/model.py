"""A compatible model: backbone -> bias-free junction layer -> head.

Follows the reference architecture of Biondi et al., CVPR 2024 (docs/method.md
§2): the junction layer's output is the feature used for retrieval, and
the classifier head (d-Simplex, ETF or learnable) sits on top of it. The
model also carries its class-to-row map, so that its contract (backbone,
feature dimension, head kind, K, class map) travels with it into checkpoints.

The junction is optional (``ModelSpec.junction``): the authors' released
learnable-head baselines have none, and their retrieval feature is the pooled
backbone output itself (``fc1`` exists only when the classifier's dimension
differs from the backbone's; docs/method.md §7 "feature (ER)").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import nn

from .backbones import build_backbone
from .heads import Head, build_head
from .simplex import ClassMap

__all__ = ["CompatModel", "ModelOutput", "ModelSpec", "build_model"]


class ModelOutput(NamedTuple):
    features: torch.Tensor
    """Junction-layer output ``(B, d)`` (the pooled backbone output when there is no
    junction), un-normalised: the retrieval feature."""
    logits: torch.Tensor
    """Head output ``(B, rows)``."""


@dataclass(frozen=True)
class ModelSpec:
    """What decides whether two models' features live in the same space."""

    backbone: str
    in_channels: int
    feat_dim: int
    head: str
    num_classes: int
    """K: fixed rows of a simplex/ETF head, or the initial rows of a learnable head."""
    etf_seed: int = 0
    junction: bool = True
    """A bias-free linear layer from the backbone's output to ``feat_dim`` (compatkit's
    default for every head). False: the feature is the pooled backbone output, and
    ``feat_dim`` must equal the backbone's size (the released learnable-head models)."""

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class CompatModel(nn.Module):
    def __init__(self, spec: ModelSpec, class_map: ClassMap | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = build_backbone(spec.backbone, spec.in_channels)
        self.junction: nn.Linear | None = None
        if spec.junction:
            self.junction = nn.Linear(self.backbone.out_dim, spec.feat_dim, bias=False)
        elif self.backbone.out_dim != spec.feat_dim:
            raise ValueError(
                f"without a junction the feature is the backbone's output: {spec.backbone} gives "
                f"{self.backbone.out_dim} dimensions, feat_dim is {spec.feat_dim}"
            )
        kw = {"seed": spec.etf_seed} if spec.head == "etf" else {}
        self.head: Head = build_head(spec.head, spec.num_classes, spec.feat_dim, **kw)
        fixed_rows = spec.num_classes if self.head.fixed else None
        self.class_map = class_map or ClassMap(fixed_rows)
        if self.class_map.num_rows != fixed_rows:
            raise ValueError(
                f"class map is for {self.class_map.num_rows} rows, the {spec.head} head has "
                f"{fixed_rows}"
            )
        self.sync_head()

    def sync_head(self) -> None:
        """Grow a learnable head to cover every mapped class (no-op for fixed heads)."""
        need = self.class_map.used_rows()
        if need > self.head.num_rows:
            self.head.grow(need)

    def add_classes(
        self, classes, space: str = "local", keep_provider_rows: bool = False
    ) -> list[int]:
        """Map new classes to head rows (see ``ClassMap``); returns their rows."""
        rows = (
            self.class_map.add_local(classes, keep_provider_rows)
            if space == "local"
            else self.class_map.add_provider(classes)
        )
        self.sync_head()
        return rows

    def targets(self, labels: torch.Tensor, space: str = "local") -> torch.Tensor:
        return self.class_map.rows(labels, space)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return self.junction(f) if self.junction is not None else f

    def forward(self, x: torch.Tensor) -> ModelOutput:
        f = self.features(x)
        return ModelOutput(f, self.head(f))

    def with_fresh_head(self) -> CompatModel:
        """A copy with the same backbone and junction weights and an empty learnable head.

        What the released code does to a learnable-head model at a replacement: the
        provider's classifier is discarded and a new one is built for the local classes
        (``add_classes`` then grows it one row per class, in order of arrival). Only for
        learnable heads: a fixed head has nothing to discard.
        """
        if self.head.fixed:
            raise ValueError(f"a {self.spec.head} head is fixed; only a learnable head is rebuilt")
        fresh = CompatModel(replace(self.spec, num_classes=0))
        body = {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}
        fresh.load_state_dict({**fresh.state_dict(), **body})
        return fresh.to(next(self.parameters()).device)

    def contract(self) -> dict:
        """The metadata a checkpoint stores; see ``checkpoint.py``."""
        return {
            **self.spec.to_dict(),
            "head_rows": self.head.num_rows,
            "class_map": self.class_map.to_dict(),
        }


def build_model(spec: ModelSpec, class_map: ClassMap | None = None) -> CompatModel:
    if spec.head == "simplex" and spec.feat_dim != spec.num_classes - 1:
        raise ValueError(
            f"d-Simplex head with K={spec.num_classes} needs feat_dim={spec.num_classes - 1}, "
            f"got {spec.feat_dim}"
        )
    return CompatModel(spec, class_map)
