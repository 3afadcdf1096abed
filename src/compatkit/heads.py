"""Classifier heads behind one interface: d-Simplex (fixed), ETF (fixed), learnable (growing).

- ``simplex``: the d-Simplex fixed classifier of Biondi et al., CVPR 2024,
  Sec. 3; feature dimension d = K - 1, weights = simplex vertices, frozen.
- ``etf``: a simplex equiangular tight frame in any d >= K - 1 (Papyan et al.,
  "Prevalence of neural collapse", PNAS 2020; used as a fixed classifier by
  Yang et al., NeurIPS 2022). With d = K - 1 it is the d-Simplex up to a
  rotation; the rotation is fixed by a seed so that every model built with the
  same (K, d, seed) has the same frame, which compatibility needs.
- ``learnable``: an ordinary linear classifier that grows when new classes
  arrive, keeping its old rows (the ER / BCT / LwF baselines).

All three map un-normalised features ``z`` to logits ``z @ W.T`` (no bias), as
the reference implementation does.
"""

from __future__ import annotations

import torch
from torch import nn

from .simplex import simplex_vertices

__all__ = ["HEADS", "ETFHead", "Head", "LearnableHead", "SimplexHead", "build_head", "etf_matrix"]


class Head(nn.Module):
    """Base class: ``forward(features) -> logits``; ``weight`` is ``(rows, feat_dim)``."""

    kind: str = ""
    fixed: bool = True

    def __init__(self, num_rows: int, feat_dim: int) -> None:
        super().__init__()
        self.num_rows = int(num_rows)
        self.feat_dim = int(feat_dim)

    @property
    def weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.t().to(features.dtype)

    def grow(self, num_rows: int) -> None:
        """Make room for ``num_rows`` rows; fixed heads pre-allocate and only check."""
        if num_rows > self.num_rows:
            raise ValueError(
                f"{self.kind} head has K={self.num_rows} fixed rows; {num_rows} were asked for"
            )

    def spec(self) -> dict:
        return {"kind": self.kind, "num_rows": self.num_rows, "feat_dim": self.feat_dim}


class SimplexHead(Head):
    """d-Simplex fixed classifier: K frozen unit vertices in R^(K-1) (a buffer, not a parameter)."""

    kind = "simplex"

    def __init__(self, num_rows: int, feat_dim: int | None = None) -> None:
        if feat_dim is not None and feat_dim != num_rows - 1:
            raise ValueError(
                f"a d-Simplex head with K={num_rows} needs feature dimension K-1={num_rows - 1}, "
                f"got {feat_dim}"
            )
        super().__init__(num_rows, num_rows - 1)
        self.register_buffer("vertices", simplex_vertices(num_rows), persistent=True)

    @property
    def weight(self) -> torch.Tensor:
        return self.vertices


def etf_matrix(num_rows: int, feat_dim: int, seed: int = 0) -> torch.Tensor:
    """Simplex ETF in R^d: the K-1-dimensional simplex rotated into R^d by a seeded isometry.

    ``W = V R^T`` with V the ``(K, K-1)`` d-Simplex vertices and R a ``(d, K-1)``
    matrix with orthonormal columns (QR of a seeded Gaussian). Rows keep unit
    norm and pairwise cosine -1/(K-1) for any d >= K-1. Computed in float64 on
    the CPU with its own generator, so it depends on neither the global seed nor
    the device.
    """
    k, d = int(num_rows), int(feat_dim)
    if k < 2:
        raise ValueError(f"ETF head needs K >= 2, got {k}")
    if d < k - 1:
        raise ValueError(f"ETF head needs feature dimension d >= K-1 = {k - 1}, got {d}")
    g = torch.Generator().manual_seed(seed)
    r, _ = torch.linalg.qr(torch.randn(d, k - 1, generator=g, dtype=torch.float64))
    return (simplex_vertices(k, torch.float64) @ r.t()).float().contiguous()


class ETFHead(Head):
    """Fixed simplex-ETF classifier in dimension d >= K-1 (frozen buffer)."""

    kind = "etf"

    def __init__(self, num_rows: int, feat_dim: int, seed: int = 0) -> None:
        super().__init__(num_rows, feat_dim)
        self.seed = int(seed)
        self.register_buffer("frame", etf_matrix(num_rows, feat_dim, seed), persistent=True)

    @property
    def weight(self) -> torch.Tensor:
        return self.frame

    def spec(self) -> dict:
        return {**super().spec(), "seed": self.seed}


class LearnableHead(Head):
    """Bias-free linear classifier whose rows grow as classes arrive; old rows are kept."""

    kind = "learnable"
    fixed = False

    def __init__(self, num_rows: int, feat_dim: int) -> None:
        super().__init__(num_rows, feat_dim)
        w = torch.empty(num_rows, feat_dim)
        nn.init.normal_(w, std=0.01)
        self.w = nn.Parameter(w)

    @property
    def weight(self) -> torch.Tensor:
        return self.w

    def grow(self, num_rows: int) -> None:
        if num_rows <= self.num_rows:
            return
        extra = torch.empty(num_rows - self.num_rows, self.feat_dim, device=self.w.device)
        nn.init.normal_(extra, std=0.01)
        # A new Parameter: optimisers must be rebuilt after growing (the trainer does so per task).
        self.w = nn.Parameter(torch.cat([self.w.data, extra.to(self.w.dtype)], dim=0))
        self.num_rows = num_rows


HEADS: dict[str, type[Head]] = {"simplex": SimplexHead, "etf": ETFHead, "learnable": LearnableHead}


def build_head(kind: str, num_rows: int, feat_dim: int | None = None, **kw) -> Head:
    """Build a head by name; ``feat_dim`` defaults to K-1 (required for ``learnable``/``etf``)."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose one of {sorted(HEADS)}")
    if kind == "simplex":
        return SimplexHead(num_rows, feat_dim)
    if feat_dim is None:
        feat_dim = num_rows - 1
    return HEADS[kind](num_rows, feat_dim, **kw)
