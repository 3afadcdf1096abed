"""Losses of d-Simplex-HOC.

Paper: Biondi et al., "Stationary Representations: Optimally Approximating
Compatibility and Implications for Improved Model Replacements", CVPR 2024.

- ``cross_entropy``: L_CE through any head (Eq. 2 with the d-Simplex head).
- ``hoc_loss``: the higher-order-dependency compatibility loss of Eq. 4, an
  InfoNCE between the L2-normalised *old* feature of each sample (anchor), its
  own *new* feature (positive) and the new features of the samples of other
  classes in the batch (negatives), with similarities scaled by mu.
- ``hoc_total_loss``: Eq. 3, ``lambda * L_CE + (1 - lambda) * L_HOC``.

Two forms of Eq. 4 (docs/method.md §3):

``textbook`` (default)
    L_i = -log( e^{s_ii} / (e^{s_ii} + sum_{j: y_j != y_i} e^{s_ij}) ),
    s_ij = mu * <old_i, new_j>: positive in the denominator, same-class
    samples other than i removed.
``reference``
    The authors' released code: L_i = -s_ii + log sum_j e^{s'_ij} with
    s'_ij = s_ij for y_j != y_i and 0 otherwise (same-class entries, i
    included, are zeroed, so each adds e^0 = 1, and the positive is not in the
    denominator).

A sample with no negative in its batch (every sample of one class) has, in
the textbook form, a one-term softmax: its loss is exactly 0 with a zero
gradient, so a degenerate batch neither produces NaN nor pushes features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["HOC_FORMS", "cross_entropy", "hoc_loss", "hoc_total_loss"]

HOC_FORMS = ("textbook", "reference")


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` against head-row ``targets``."""
    return F.cross_entropy(logits.float(), targets)


def hoc_loss(
    new_features: torch.Tensor,
    labels: torch.Tensor,
    old_features: torch.Tensor,
    mu: float = 10.0,
    form: str = "textbook",
) -> torch.Tensor:
    """HOC loss (Eq. 4), mean over the batch; features are L2-normalised here.

    Args:
        new_features: ``(B, d)`` features of the model being trained.
        labels: ``(B,)`` class labels (any label space; only equality matters).
        old_features: ``(B, d)`` features of the frozen old model on the same images.
        mu: similarity scale (inverse temperature); the reference uses 10.
        form: ``"textbook"`` or ``"reference"`` (see the module docstring).
    """
    if form not in HOC_FORMS:
        raise ValueError(f"unknown HOC form {form!r}; choose one of {HOC_FORMS}")
    if new_features.shape != old_features.shape:
        raise ValueError(
            f"HOC needs old and new features of one shape, got {tuple(old_features.shape)} "
            f"and {tuple(new_features.shape)}; the old model's feature dimension differs"
        )
    new = F.normalize(new_features.float(), dim=1)
    old = F.normalize(old_features.detach().float(), dim=1)
    sim = mu * old @ new.t()  # (B, B): row i = anchor old_i against every new_j
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=sim.device)
    pos = sim.diagonal()
    if form == "textbook":
        masked = sim.masked_fill(same & ~eye, float("-inf"))  # keep i itself and other classes
        return (torch.logsumexp(masked, dim=1) - pos).mean()
    zeroed = sim.masked_fill(same, 0.0)
    return (torch.logsumexp(zeroed, dim=1) - pos).mean()


def hoc_total_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    new_features: torch.Tensor,
    labels: torch.Tensor,
    old_features: torch.Tensor | None,
    lam: float = 0.1,
    mu: float = 10.0,
    form: str = "textbook",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 3: ``lam * L_CE + (1 - lam) * L_HOC``; without an old model, L_CE alone.

    Returns the loss and its detached parts (tensors, so logging never forces a device sync).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must lie in [0, 1], got {lam}")
    ce = cross_entropy(logits, targets)
    if old_features is None:
        return ce, {"ce": ce.detach()}
    hoc = hoc_loss(new_features, labels, old_features, mu, form)
    total = lam * ce + (1.0 - lam) * hoc
    return total, {"ce": ce.detach(), "hoc": hoc.detach()}
