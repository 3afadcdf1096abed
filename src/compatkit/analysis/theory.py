"""A Monte Carlo model of Theorem 1 and Corollary 1, with closed forms to check it against.

Paper: Biondi et al., "Stationary Representations: Optimally Approximating
Compatibility and Implications for Improved Model Replacements", CVPR 2024,
Sec. 3: Theorem 1 (stationary representations satisfy Definition 1 in
expectation) and Corollary 1 (satisfying it for every pair is infeasible).
The paper's text is not available to this project; the model below follows
its statement as summarised in METHOD.md Sec. 1, and where it has to choose
it says so.

The model
---------
K classes in R^d (d >= K-1; the d-Simplex vertices of ``simplex_vertices``
sit in the first K-1 coordinates). The old model k puts the features of class
y uniformly in a region of radius ``r_old`` around the class centre, the new
model t in a region of radius ``r_new`` (a better model: ``r_new <= r_old``).

- ``region="ball"``: a Euclidean ball of radius r around the centre (the
  centres are unit vectors, so r < 1 keeps the origin outside the ball).
- ``region="cap"``: a spherical cap of *angular* radius r (radians) around the
  centre on the unit sphere S^(d-1).

Stationary update: the new model's centres are the same simplex vertices.
Non-stationary update: each new centre is rotated by ``shift`` degrees away
from its vertex, in a random direction orthogonal to it (one direction per
class, from the seed); the whole class region moves rigidly with it.

A query sample i has an old feature h_i^k and a new feature h_i^t, a gallery
sample j an old feature h_j^k. ``coupling="independent"`` draws h_i^t and h_i^k
independently in their regions (the statement of Theorem 1 only involves the
class regions); ``coupling="shrink"`` ties them: the new feature is the old one
with the same direction and the same quantile of the radius (for a ball,
literally h_i^t = c + (r_new/r_old)(h_i^k - c)), i.e. every sample individually
moves towards its class centre, the most favourable update one can ask for.

Distances follow the retrieval practice of ``analysis.py``: cosine distance,
or Euclidean distance between L2-normalised features; ``normalize=False``
measures Euclidean distance between the raw ball points instead.

What the model shows (and the tests check)
------------------------------------------
With independent features, E[h] = m(r)·mu for a class of centre mu, with
m(r) = E[cos angle(h, mu)] decreasing in r (by symmetry of the region about
mu; :func:`cap_mean_cos` gives m in closed form for caps). Hence on the sphere

    E[cos-dist(h_i^t, h_j^k)] = 1 - m(r_new) m(r_old) <mu'_a, mu_b>,
    E[cos-dist(h_i^k, h_j^k)] = 1 - m(r_old)^2       <mu_a,  mu_b>

(:func:`expected_cosine_distance_caps`). Same class (<mu_a, mu_b> = 1,
stationary mu' = mu): holds iff m(r_new) >= m(r_old), i.e. r_new <= r_old.
Different class: the d-Simplex gives <mu_a, mu_b> = -1/(K-1) < 0, so it holds
for the same reason, strictly. Both inequalities thus hold in expectation
exactly when the new classes are tighter, and it is the negative cosine of
the simplex that makes the different-class one strict (orthogonal centres
would give equality). A rotation of the centres by alpha multiplies <mu', mu>
by cos(alpha), and the same-class inequality fails once
cos(alpha) < m(r_old)/m(r_new) (:func:`critical_shift_deg`).

Two findings worth stating plainly:

- Corollary 1: the per-pair fractions stay well below 1 (about 0.75 / 0.5 at
  K=10, r_old=0.5, r_new=0.3): the expectation gap is a small drift under a
  large pair-to-pair noise. Even with ``coupling="shrink"`` some same-class
  pairs get farther apart (two old features close together at the rim: pulling
  one of them to the centre moves it away from the other).
- In *raw* Euclidean space (``region="ball"``, ``normalize=False``) the
  different-class inequality fails in expectation: x -> |x - y| is convex,
  hence subharmonic, so its mean over a ball grows with the radius and a
  tighter new class is on average *closer* to every old feature, of its own
  class and of the others alike. The theorem's different-class half needs the
  normalised features that retrieval uses: exactly (formula above) for the
  cosine distance and the squared Euclidean one (2 - 2 cos on the sphere), and
  as measured here for the plain Euclidean distance between normalised
  features.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import InputError
from ..simplex import simplex_vertices
from .stats import definition1_pairs, mean_ci, pair_distances

__all__ = [
    "COUPLINGS",
    "REGIONS",
    "TheoryResult",
    "cap_mean_cos",
    "critical_shift_deg",
    "expected_cosine_distance_caps",
    "expected_norm_in_ball",
    "expected_sq_distance_balls",
    "expected_sq_norm_in_ball",
    "plot_theory",
    "plot_theory_2d",
    "sample_ball",
    "sample_cap",
    "simulate",
    "sweep",
    "verdict",
]

REGIONS = ("ball", "cap")
COUPLINGS = ("independent", "shrink")
METRICS = ("euclidean", "cosine")

# Rows of d-dim float64 drawn per chunk: bounds memory for large K (d = K-1).
_CHUNK_ELEMS = 1 << 22


# --------------------------------------------------------------------------- closed forms


def expected_sq_norm_in_ball(r: float, n: int) -> float:
    """E||X - a||^2 for X uniform in the n-ball B(a, r): n r^2 / (n + 2).

    The radius R = |X - a| has density n rho^(n-1) / r^n on [0, r], so
    E[R^2] = n/(n+2) r^2.
    """
    return n * r * r / (n + 2)


def expected_norm_in_ball(r: float, n: int) -> float:
    """E||X - a|| for X uniform in the n-ball B(a, r): n r / (n + 1) (same density as above)."""
    return n * r / (n + 1)


def expected_sq_distance_balls(center_dist: float, r1: float, r2: float, n: int) -> float:
    """E||X - Y||^2 for independent X ~ U(B(a, r1)), Y ~ U(B(b, r2)) in R^n, |a - b| = center_dist.

    Expanding X - Y = (a - b) + (X - a) - (Y - b), the cross terms vanish in
    expectation (both offsets have mean zero and are independent), leaving
    |a - b|^2 + n/(n+2) (r1^2 + r2^2).
    """
    return center_dist**2 + expected_sq_norm_in_ball(r1, n) + expected_sq_norm_in_ball(r2, n)


def _cap_grid(theta: float, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Polar-angle grid on [0, theta] and the cap's polar density ∝ sin^(d-2)(phi), unnormalised.

    The density is scaled by its maximum on the interval (at min(theta, pi/2))
    in log space so that sin^(d-2) does not underflow for d in the thousands.
    The grid is finer for large d, where the mass crowds next to theta.
    """
    m = int(min(max(8193, 64 * d), 1 << 18))
    phi = torch.linspace(0.0, theta, m, dtype=torch.float64)
    if d == 2:
        return phi, torch.ones_like(phi)
    peak = math.log(math.sin(min(theta, math.pi / 2)))
    logw = (d - 2) * (torch.log(torch.sin(phi).clamp_min(1e-300)) - peak)
    return phi, torch.exp(logw)


def _trapz_cumulative(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    inc = 0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])
    return torch.cat([torch.zeros(1, dtype=y.dtype), torch.cumsum(inc, 0)])


@functools.lru_cache(maxsize=32)
def _cap_cdf(theta: float, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid and normalised CDF of the cap's polar angle (cached: one per radius and dimension)."""
    phi, w = _cap_grid(theta, d)
    cdf = _trapz_cumulative(w, phi)
    return phi, cdf / cdf[-1]


def cap_mean_cos(theta: float, d: int) -> float:
    """m(theta) = E[cos phi] for a point uniform in a cap of angular radius theta on S^(d-1).

    The polar angle phi has density ∝ sin^(d-2)(phi) on [0, theta] (the
    (d-2)-sphere of directions at angle phi has radius sin phi); the integral
    is done by the trapezoid rule on a fine grid. Checks: d = 3 gives
    (1 + cos theta)/2 (Archimedes: cos phi is uniform), d = 2 gives
    sin(theta)/theta, theta = pi gives 0.
    """
    _check_cap(theta, d)
    if theta == 0.0:
        return 1.0
    phi, w = _cap_grid(theta, d)
    z = _trapz_cumulative(w, phi)[-1]
    return float(_trapz_cumulative(w * torch.cos(phi), phi)[-1] / z)


def expected_cosine_distance_caps(center_cos: float, theta1: float, theta2: float, d: int) -> float:
    """E[1 - <X, Y>] for independent X, Y uniform in caps (angular radii theta1, theta2) on S^(d-1).

    By symmetry of a cap about its centre, E[X] = m(theta1) mu_1, so by
    independence E<X, Y> = m(theta1) m(theta2) <mu_1, mu_2>.
    """
    return 1.0 - cap_mean_cos(theta1, d) * cap_mean_cos(theta2, d) * center_cos


def critical_shift_deg(r_old: float, r_new: float, d: int) -> float:
    """Rotation of the new centres (degrees) past which the same-class inequality fails (caps).

    From E[cos-dist] above: m(r_new) cos(alpha) >= m(r_old) is needed, so the
    critical angle is arccos(m(r_old)/m(r_new)); 0 when r_new >= r_old.
    """
    m_old, m_new = cap_mean_cos(r_old, d), cap_mean_cos(r_new, d)
    if m_new <= 0 or m_old >= m_new:
        return 0.0
    return math.degrees(math.acos(m_old / m_new))


def _check_cap(theta: float, d: int) -> None:
    if d < 2:
        raise InputError(f"a spherical cap needs dimension d >= 2, got {d}")
    if not 0.0 <= theta <= math.pi:
        raise InputError(f"cap angular radius must be in [0, pi] radians, got {theta}")


# --------------------------------------------------------------------------- samplers


def sample_ball(
    centers: torch.Tensor,
    r: float,
    generator: torch.Generator | None = None,
    latent: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One point uniform in the ball B(centers[n], r) for each row n.

    Direction: a standard Gaussian vector, normalised (uniform on the sphere by
    rotation invariance); radius r·U^(1/d), because the volume within radius
    rho grows as rho^d. ``latent = (gaussian, uniform)`` reuses given draws
    (the ``shrink`` coupling uses the same draws for two radii).
    """
    n, d = centers.shape
    g, u = latent if latent is not None else _latent(n, d, generator)
    direction = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return centers + direction * (r * u.pow(1.0 / d)).unsqueeze(1)


def sample_cap(
    centers: torch.Tensor,
    theta: float,
    generator: torch.Generator | None = None,
    latent: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One point uniform in the spherical cap of angular radius theta around each unit row.

    Method (vectorised, exact up to the quadrature of the inverse CDF): the
    polar angle phi from the centre has density ∝ sin^(d-2)(phi) on
    [0, theta]; it is drawn by inverting its CDF (trapezoid rule on a fine
    grid, linear interpolation). The direction in the tangent space is a
    Gaussian vector with its component along the centre removed, normalised
    (uniform on the (d-2)-sphere orthogonal to the centre). The point is
    cos(phi)·mu + sin(phi)·v. Rejection from the whole sphere would be exact
    but its acceptance rate collapses for small caps in high dimension.
    """
    n, d = centers.shape
    _check_cap(theta, d)
    g, u = latent if latent is not None else _latent(n, d, generator)
    mu = centers / centers.norm(dim=1, keepdim=True)
    if theta == 0.0:
        return mu.clone()
    phi_grid, cdf = _cap_cdf(float(theta), int(d))
    k = torch.searchsorted(cdf, u.clamp(0.0, 1.0)).clamp(1, cdf.numel() - 1)
    c0, c1 = cdf[k - 1], cdf[k]
    t = ((u - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0.0, 1.0)
    phi = phi_grid[k - 1] + t * (phi_grid[k] - phi_grid[k - 1])
    v = g - (g * mu).sum(dim=1, keepdim=True) * mu
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return torch.cos(phi).unsqueeze(1) * mu + torch.sin(phi).unsqueeze(1) * v


def _latent(n: int, d: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.randn(n, d, generator=generator, dtype=torch.float64)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return g, u


def _rotate(x: torch.Tensor, mu: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
    """Rotate each row of x by alpha (radians) in the plane (mu, v), taking mu towards v.

    R = I + (cos a - 1)(mu mu^T + v v^T) + sin a (v mu^T - mu v^T) for
    orthonormal mu, v: R mu = cos a mu + sin a v, and R is the identity on the
    orthogonal complement of the plane, so a class region moves rigidly.
    """
    xm = (x * mu).sum(dim=1, keepdim=True)
    xv = (x * v).sum(dim=1, keepdim=True)
    c, s = math.cos(alpha), math.sin(alpha)
    return x + (c - 1.0) * (mu * xm + v * xv) + s * (v * xm - mu * xv)


# --------------------------------------------------------------------------- simulation


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


def _validate(K: int, d: int, r_old: float, r_new: float, region: str, metric: str, coupling: str):
    if not isinstance(K, int) or K < 2:
        raise InputError(f"K must be an integer >= 2, got {K!r}")
    if d < K - 1:
        raise InputError(f"dimension d must be >= K-1 = {K - 1} to hold the d-Simplex, got {d}")
    if d < 2:
        raise InputError(f"the model needs dimension d >= 2 (to rotate centres), got {d}")
    if r_old < 0 or r_new < 0:
        raise InputError(f"radii must be >= 0, got r_old={r_old}, r_new={r_new}")
    if region not in REGIONS:
        raise InputError(f"region must be one of {list(REGIONS)}, got {region!r}")
    if region == "cap" and max(r_old, r_new) > math.pi:
        raise InputError(
            f"cap radii are angles in radians and must be <= pi, got r_old={r_old}, r_new={r_new}"
        )
    if metric not in METRICS:
        raise InputError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if coupling not in COUPLINGS:
        raise InputError(f"coupling must be one of {list(COUPLINGS)}, got {coupling!r}")


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


class _Model:
    """Centres, rotation directions and samplers of one (K, d, radii, shift) setting."""

    def __init__(self, K, d, r_old, r_new, shift, region, coupling, generator):
        self.K, self.d = K, d
        self.r_old, self.r_new = r_old, r_new
        self.alpha = math.radians(shift)
        self.region, self.coupling = region, coupling
        self.gen = generator
        v = torch.zeros(K, d, dtype=torch.float64)
        v[:, : K - 1] = simplex_vertices(K, torch.float64)
        self.centers = v
        # One random direction per class, orthogonal to its vertex, for the rotation.
        g = torch.randn(K, d, generator=generator, dtype=torch.float64)
        g = g - (g * v).sum(dim=1, keepdim=True) * v
        self.perp = g / g.norm(dim=1, keepdim=True)
        self._sample = sample_ball if region == "ball" else sample_cap

    def old(self, cls: torch.Tensor, latent=None) -> torch.Tensor:
        return self._sample(self.centers[cls], self.r_old, self.gen, latent)

    def query(self, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_i^t, h_i^k) for query samples of classes ``cls``."""
        n = cls.numel()
        lat_old = _latent(n, self.d, self.gen)
        lat_new = lat_old if self.coupling == "shrink" else _latent(n, self.d, self.gen)
        old = self.old(cls, lat_old)
        new = self._sample(self.centers[cls], self.r_new, self.gen, lat_new)
        if self.alpha != 0.0:
            new = _rotate(new, self.centers[cls], self.perp[cls], self.alpha)
        return new, old


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
    _validate(K, d, r_old, r_new, region, metric, coupling)
    if n_pairs < 2:
        raise InputError(f"n_pairs must be >= 2, got {n_pairs}")
    gen = torch.Generator().manual_seed(int(seed))
    model = _Model(K, d, r_old, r_new, shift, region, coupling, gen)

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
        step = max(1, _CHUNK_ELEMS // d)
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


def plot_theory(results: Sequence[TheoryResult], path: str | Path) -> Path:
    """Per-pair fractions and expectation margins against r_new/r_old, one line per shift.

    Left: per-pair satisfaction (same class solid, different class dashed);
    Corollary 1 says these stay below 1. Right: the margin of each inequality
    in expectation, signed so that > 0 means it holds (same: E_old - E_new,
    different: E_new - E_old), with 95 % intervals.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    shifts = sorted({r.shift for r in results})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, sh in enumerate(shifts):
        rs = sorted(
            (r for r in results if r.shift == sh), key=lambda r: r.r_new / max(r.r_old, 1e-12)
        )
        x = [r.r_new / r.r_old if r.r_old > 0 else float("nan") for r in rs]
        c = colors[n % len(colors)]
        lab = "stationary" if sh == 0 else f"shift {sh:g}°"
        ax1.plot(x, [r.same_frac for r in rs], "o-", color=c, label=f"{lab}: same")
        ax1.plot(x, [r.diff_frac for r in rs], "s--", color=c, label=f"{lab}: different")
        ax2.errorbar(
            x, [-r.same_gap for r in rs], yerr=[r.same_gap_ci for r in rs],
            fmt="o-", color=c, capsize=3, label=f"{lab}: same (E_old - E_new)",
        )  # fmt: skip
        ax2.errorbar(
            x, [r.diff_gap for r in rs], yerr=[r.diff_gap_ci for r in rs],
            fmt="s--", color=c, capsize=3, label=f"{lab}: different (E_new - E_old)",
        )  # fmt: skip
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_xlabel("r_new / r_old")
    ax1.set_ylabel("fraction of pairs satisfying Definition 1")
    ax1.set_title("per pair (Corollary 1: < 1)")
    ax1.set_ylim(0, 1.05)
    ax1.legend(fontsize=7)
    ax2.axhline(0.0, color="k", lw=0.8)
    ax2.set_xlabel("r_new / r_old")
    ax2.set_ylabel("margin in expectation (> 0: holds)")
    ax2.set_title("in expectation (Theorem 1)")
    ax2.legend(fontsize=7)
    if results:
        r0 = results[0]
        fig.suptitle(
            f"K={r0.K}, d={r0.d}, {r0.region}, {r0.metric}"
            f"{'' if r0.normalize else ' (raw)'}, {r0.coupling}, r_old={r0.r_old:g}",
            fontsize=10,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_theory_2d(
    path: str | Path,
    r_old: float = 0.5,
    r_new: float = 0.3,
    shift: float = 30.0,
    region: str = "ball",
    n: int = 150,
    seed: int = 0,
) -> Path:
    """K=3, d=2: old and new samples around the simplex vertices, stationary vs shifted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _validate(3, 2, r_old, r_new, region, "euclidean", "independent")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, sh in zip(axes, (0.0, shift), strict=True):
        gen = torch.Generator().manual_seed(int(seed))
        model = _Model(3, 2, r_old, r_new, sh, region, "independent", gen)
        t = torch.linspace(0, 2 * math.pi, 200)
        ax.plot(torch.cos(t), torch.sin(t), color="0.8", lw=0.8)
        for c in range(3):
            cls = torch.full((n,), c, dtype=torch.long)
            new, old = model.query(cls)
            col = colors[c]
            ax.scatter(old[:, 0], old[:, 1], s=8, facecolors="none", edgecolors=col, alpha=0.5)
            ax.scatter(new[:, 0], new[:, 1], s=8, color=col, alpha=0.8)
            v = model.centers[c]
            ax.plot([0, v[0]], [0, v[1]], color=col, lw=1)
            ax.scatter([v[0]], [v[1]], marker="*", s=150, color="k", zorder=5)
        ax.set_aspect("equal")
        ax.set_xlim(-1.8, 1.8)
        ax.set_ylim(-1.8, 1.8)
        ax.set_title("stationary centres" if sh == 0 else f"new centres rotated by {sh:g}°")
    axes[0].scatter([], [], facecolors="none", edgecolors="k", label=f"old model (r={r_old:g})")
    axes[0].scatter([], [], color="k", label=f"new model (r={r_new:g})")
    axes[0].scatter([], [], marker="*", color="k", label="d-Simplex vertex")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"Theorem 1 model, K=3, d=2, {region}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
