"""The Monte Carlo of Theorem 1 and Corollary 1: Definition 1 per pair and in expectation.

:func:`simulate` draws query and gallery features from the class regions of
:class:`~compatkit.analysis.theory.RegionModel` (old and new model, stationary or shifted
centres) and measures both inequalities of Definition 1 per pair and in expectation, with
95 % intervals; :func:`sweep` runs it over a grid. The model and its closed forms, which the
tests check the simulation against, are in :mod:`compatkit.analysis.theory`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..errors import InputError
from .stats import definition1_pairs, mean_ci, pair_distances
from .theory import CHUNK_ELEMS, RegionModel, check_setting

__all__ = ["TheoryResult", "simulate", "sweep", "verdict"]


@dataclass
class TheoryResult:
    """One setting of the model: Definition 1 per pair and in expectation."""

    same_frac: float
    """Fraction of same-class pairs with d(h_i^t, h_j^k) <= d(h_i^k, h_j^k)."""
    diff_frac: float
    """Fraction of different-class pairs with d(h_i^t, h_j^k) >= d(h_i^k, h_j^k)."""
    same_expect_new: float
    same_expect_old: float
    diff_expect_new: float
    diff_expect_old: float
    same_holds_in_expectation: bool
    diff_holds_in_expectation: bool
    same_ci_new: float
    """95 % half-widths of the four expectations (normal approximation)."""
    same_ci_old: float
    diff_ci_new: float
    diff_ci_old: float
    same_gap: float
    """E_new - E_old (paired): <= 0 is the same-class inequality in expectation."""
    same_gap_ci: float
    diff_gap: float
    """E_new - E_old (paired): >= 0 is the different-class inequality in expectation."""
    diff_gap_ci: float
    n_pairs: int
    """Pairs per group (same-class and different-class each)."""
    K: int
    d: int
    r_old: float
    r_new: float
    shift: float
    """Rotation of each new centre away from its vertex, degrees (0 = stationary)."""
    region: str
    metric: str
    normalize: bool
    coupling: str
    seed: int
    n_per_class: int | None = None
    notes: list[str] = field(default_factory=list)
    """Flags about the setting (r_new > r_old, a ball containing the origin, ...)."""

    @property
    def stationary(self) -> bool:
        return self.shift == 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["verdict"] = verdict(self)
        return out


def verdict(res: TheoryResult) -> str:
    """One line: whether Definition 1 holds in expectation, and the per-pair fractions."""
    failed = []
    if not res.same_holds_in_expectation:
        failed.append("same-class")
    if not res.diff_holds_in_expectation:
        failed.append("different-class")
    head = (
        "holds in expectation" if not failed else "fails in expectation (" + ", ".join(failed) + ")"
    )
    # A gap whose interval contains 0 is a tie within the Monte Carlo noise.
    tied = [
        name
        for name, gap, hw in (
            ("same", res.same_gap, res.same_gap_ci),
            ("diff", res.diff_gap, res.diff_gap_ci),
        )
        if abs(gap) <= hw
    ]
    if tied:
        head += " [" + "/".join(tied) + " gap within 95% CI]"
    pp = f"per-pair {res.same_frac:.2f} / {res.diff_frac:.2f}"
    if res.same_frac < 1.0 or res.diff_frac < 1.0:
        pp += " < 1 (Corollary 1)"
    return f"{head}; {pp}"


def _notes(r_old: float, r_new: float, region: str, metric: str, normalize: bool) -> list[str]:
    notes = []
    if r_new > r_old:
        notes.append(
            "r_new > r_old: the new model is looser than the old; Theorem 1 does not apply"
        )
    if region == "ball" and max(r_old, r_new) >= 1.0 and (normalize or metric == "cosine"):
        notes.append(
            "ball radius >= 1 reaches the origin: normalised features of a class can point anywhere"
        )
    if region == "ball" and metric == "euclidean" and not normalize:
        notes.append("raw Euclidean distances (not the normalised features retrieval compares)")
    return notes


def simulate(
    K: int = 10,
    d: int | None = None,
    r_old: float = 0.5,
    r_new: float = 0.3,
    shift: float = 0.0,
    region: str = "ball",
    n_per_class: int | None = None,
    n_pairs: int = 100_000,
    metric: str = "euclidean",
    seed: int = 0,
    coupling: str = "independent",
    normalize: bool = True,
) -> TheoryResult:
    """Monte Carlo estimate of Definition 1 under the model of the module docstring.

    Args:
        K: number of classes (simplex vertices).
        d: feature dimension, >= K-1 and >= 2; None means max(K-1, 2).
        r_old, r_new: class radii of the old and new models (ball: Euclidean;
            cap: angular, radians).
        shift: rotation of the new centres in degrees (0: stationary update).
        region: ``"ball"`` or ``"cap"``.
        n_per_class: None (default) draws every pair from fresh, independent
            samples, so the pairs are i.i.d. and the intervals exact; an integer
            builds a finite query and gallery set of that many samples per
            class and evaluates it with :func:`analysis.definition1_pairs`, the
            code path used on real features.
        n_pairs: pairs per group (same-class and different-class each).
        metric: ``"euclidean"`` or ``"cosine"``.
        seed: everything is drawn from one generator seeded with it.
        coupling: ``"independent"`` or ``"shrink"`` (see the module docstring).
        normalize: L2-normalise before the Euclidean distance (default, as
            retrieval does); False measures raw Euclidean distances.
    """
    d = max(K - 1, 2) if d is None else int(d)
    check_setting(K, d, r_old, r_new, region, metric, coupling)
    if n_pairs < 2:
        raise InputError(f"n_pairs must be >= 2, got {n_pairs}")
    gen = torch.Generator().manual_seed(int(seed))
    model = RegionModel(K, d, r_old, r_new, shift, region, coupling, gen)

    if n_per_class is not None:
        if n_per_class < 2:
            raise InputError(f"n_per_class must be >= 2, got {n_per_class}")
        labels = torch.arange(K).repeat_interleave(n_per_class)
        new_q, old_q = model.query(labels)
        old_g = model.old(labels)  # a separate gallery set, drawn from the old model
        rep = definition1_pairs(
            new_q, old_q, old_g, labels, labels, metric, n_pairs, gen, False, normalize
        )
        groups = {}
        for name in ("same", "diff"):
            g = rep[name]
            groups[name] = (
                g["frac"],
                g["expect_new"],
                g["expect_old"],
                g["gap_new_minus_old"],
                g["n_pairs"],
            )
    else:
        groups = {}
        step = max(1, CHUNK_ELEMS // d)
        for name, same in (("same", True), ("diff", False)):
            d_new_all, d_old_all = [], []
            for s in range(0, n_pairs, step):
                m = min(step, n_pairs - s)
                a = torch.randint(0, K, (m,), generator=gen)
                # A different class, uniform over the other K-1.
                b = a if same else (a + torch.randint(1, K, (m,), generator=gen)) % K
                new_q, old_q = model.query(a)
                old_g = model.old(b)
                d_new_all.append(pair_distances(new_q, old_g, metric, normalize))
                d_old_all.append(pair_distances(old_q, old_g, metric, normalize))
            dn, do = torch.cat(d_new_all), torch.cat(d_old_all)
            ok = dn <= do if same else dn >= do
            groups[name] = (
                float(ok.double().mean()),
                mean_ci(dn),
                mean_ci(do),
                mean_ci(dn - do),
                n_pairs,
            )

    s_frac, s_new, s_old, s_gap, n_s = groups["same"]
    d_frac, d_new, d_old, d_gap, n_d = groups["diff"]
    return TheoryResult(
        same_frac=s_frac,
        diff_frac=d_frac,
        same_expect_new=s_new["mean"],
        same_expect_old=s_old["mean"],
        diff_expect_new=d_new["mean"],
        diff_expect_old=d_old["mean"],
        same_holds_in_expectation=bool(s_new["mean"] <= s_old["mean"]),
        diff_holds_in_expectation=bool(d_new["mean"] >= d_old["mean"]),
        same_ci_new=s_new["half_width"],
        same_ci_old=s_old["half_width"],
        diff_ci_new=d_new["half_width"],
        diff_ci_old=d_old["half_width"],
        same_gap=s_gap["mean"],
        same_gap_ci=s_gap["half_width"],
        diff_gap=d_gap["mean"],
        diff_gap_ci=d_gap["half_width"],
        n_pairs=min(n_s, n_d),
        K=K,
        d=d,
        r_old=float(r_old),
        r_new=float(r_new),
        shift=float(shift),
        region=region,
        metric=metric,
        normalize=bool(normalize),
        coupling=coupling,
        seed=int(seed),
        n_per_class=n_per_class,
        notes=_notes(r_old, r_new, region, metric, normalize),
    )


def sweep(
    r_news: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
    shifts: Sequence[float] = (0.0, 30.0),
    r_old: float = 0.5,
    **kwargs,
) -> list[TheoryResult]:
    """:func:`simulate` over every (shift, r_new) combination, shifts outermost.

    Every setting uses the same seed (common random numbers), so differences
    between settings are not blurred by independent Monte Carlo noise.
    """
    return [
        simulate(r_old=r_old, r_new=float(rn), shift=float(sh), **kwargs)
        for sh in shifts
        for rn in r_news
    ]


# --------------------------------------------------------------------------- plots
