"""A Monte Carlo model of Theorem 1 and Corollary 1, with closed forms to check it against.

Paper: Biondi et al., "Stationary Representations: Optimally Approximating
Compatibility and Implications for Improved Model Replacements", CVPR 2024,
Sec. 3: Theorem 1 (stationary representations satisfy Definition 1 in
expectation) and Corollary 1 (satisfying it for every pair is infeasible).
The paper's text is not available to this project; the model below follows
its statement as summarised in docs/method.md §1, and where it has to choose
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

import torch

from ..errors import InputError
from ..simplex import simplex_vertices

__all__ = [
    "COUPLINGS",
    "REGIONS",
    "RegionModel",
    "cap_mean_cos",
    "check_setting",
    "critical_shift_deg",
    "expected_cosine_distance_caps",
    "expected_norm_in_ball",
    "expected_sq_distance_balls",
    "expected_sq_norm_in_ball",
    "sample_ball",
    "sample_cap",
]

REGIONS = ("ball", "cap")
COUPLINGS = ("independent", "shrink")
METRICS = ("euclidean", "cosine")

# Rows of d-dim float64 drawn per chunk: bounds memory for large K (d = K-1).
CHUNK_ELEMS = 1 << 22


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


# --------------------------------------------------------------------------- the model


def check_setting(
    K: int, d: int, r_old: float, r_new: float, region: str, metric: str, coupling: str
):
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


class RegionModel:
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
