"""ETF and ETF-HOC: a fixed simplex equiangular tight frame as the classifier.

Papers: Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal
phase of deep learning training", PNAS 2020 (the simplex ETF that class means
converge to); Yang et al., "Inducing Neural Collapse in Imbalanced Learning: Do
We Really Need a Learnable Classifier at the End of Deep Neural Network?",
NeurIPS 2022 (the ETF fixed, not learned, as the classifier). In dimension
d = K - 1 the frame is the d-Simplex of Biondi et al., CVPR 2024, up to a
rotation; in d > K - 1 it is the same simplex placed in a seeded
(K-1)-dimensional subspace (``compatkit.heads.etf_matrix``), so it is fixed and
shared by every model built with the same (K, d, seed): also stationary.

- ``etf``: ``L = L_CE`` through the fixed ETF head (the ETF counterpart of ``cores``).
- ``etf-hoc``: Biondi et al., CVPR 2024, Eq. 3 with the ETF head instead of the
  d-Simplex one, ``lambda * L_CE + (1 - lambda) * L_HOC`` (Eq. 4), the same
  loss and options as ``hoc`` (``compatkit.losses.hoc_total_loss``).
"""

from __future__ import annotations

from .base import register_method
from .er import ER
from .hoc import HOC

__all__ = ["ETF", "ETFHOC"]


@register_method
class ETF(ER):
    """ER's loss (cross-entropy only) through the fixed ETF head."""

    name = "etf"
    head = "etf"
    paper = "Papyan et al., PNAS 2020; Yang et al., NeurIPS 2022 (fixed ETF classifier, L_CE)"


@register_method
class ETFHOC(HOC):
    """``hoc`` with the fixed ETF head: same Config (lam 0.1, mu 10, form textbook), same loss."""

    name = "etf-hoc"
    head = "etf"
    paper = "Biondi et al., CVPR 2024, Eq. 3 and Eq. 4, with a fixed ETF head (Yang et al. 2022)"
