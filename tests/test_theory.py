"""The Monte Carlo model of Theorem 1: samplers and simulation against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from compatkit.analysis import figures, montecarlo, theory
from compatkit.analysis.montecarlo import simulate
from compatkit.analysis.theory import (
    cap_mean_cos,
    critical_shift_deg,
    expected_cosine_distance_caps,
    expected_norm_in_ball,
    expected_sq_distance_balls,
    expected_sq_norm_in_ball,
    sample_ball,
    sample_cap,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(d: int, k: int = 0) -> torch.Tensor:
    e = torch.zeros(d, dtype=torch.float64)
    e[k] = 1.0
    return e


# --------------------------------------------------------------------------- closed forms


def test_ball_closed_forms_by_hand() -> None:
    # n = 3: E|X-a|^2 = 3/5 r^2, E|X-a| = 3/4 r.
    assert expected_sq_norm_in_ball(2.0, 3) == pytest.approx(3 / 5 * 4)
    assert expected_norm_in_ball(2.0, 3) == pytest.approx(1.5)
    assert expected_sq_distance_balls(1.5, 1.0, 2.0, 3) == pytest.approx(2.25 + 0.6 + 2.4)


def test_cap_mean_cos_against_independent_closed_forms() -> None:
    th = 0.7
    assert cap_mean_cos(th, 3) == pytest.approx((1 + math.cos(th)) / 2, abs=1e-7)  # Archimedes
    assert cap_mean_cos(th, 2) == pytest.approx(math.sin(th) / th, abs=1e-7)  # arc, uniform angle
    # d = 4: density ∝ sin^2: E cos = (sin^3/3) / (th/2 - sin(2 th)/4).
    want4 = (math.sin(th) ** 3 / 3) / (th / 2 - math.sin(2 * th) / 4)
    assert cap_mean_cos(th, 4) == pytest.approx(want4, abs=1e-6)
    assert cap_mean_cos(math.pi, 7) == pytest.approx(0.0, abs=1e-6)  # the whole sphere
    assert cap_mean_cos(0.0, 7) == 1.0
    # A tighter cap is more concentrated (the monotonicity Theorem 1 relies on).
    assert cap_mean_cos(0.3, 50) > cap_mean_cos(0.5, 50) > cap_mean_cos(0.9, 50)


# --------------------------------------------------------------------------- samplers


def test_sample_ball_matches_closed_forms() -> None:
    n, d, r = 200_000, 5, 0.8
    a = torch.zeros(n, d, dtype=torch.float64)
    x = sample_ball(a, r, _gen(1))
    rad = x.norm(dim=1)
    assert float(rad.max()) <= r + 1e-12
    se = float(rad.std()) / math.sqrt(n)
    assert float(rad.mean()) == pytest.approx(expected_norm_in_ball(r, d), abs=5 * se)
    sq = rad.pow(2)
    assert float(sq.mean()) == pytest.approx(
        expected_sq_norm_in_ball(r, d), abs=5 * float(sq.std()) / math.sqrt(n)
    )
    # Two balls at centre distance 1.3 with radii 0.8 and 0.4.
    b = torch.zeros(n, d, dtype=torch.float64)
    b[:, 1] = 1.3
    y = sample_ball(b, 0.4, _gen(2))
    dd = (x - y).pow(2).sum(dim=1)
    want = expected_sq_distance_balls(1.3, r, 0.4, d)
    assert float(dd.mean()) == pytest.approx(want, abs=5 * float(dd.std()) / math.sqrt(n))
    # Uniform in volume: P(|X| <= r/2) = 2^-d.
    assert float((rad <= r / 2).double().mean()) == pytest.approx(0.5**d, abs=0.003)


def test_sample_cap_d3_is_uniform_like_rejection_sampling() -> None:
    # On S^2, uniform in a cap means cos(phi) uniform on [cos theta, 1]; compare its
    # deciles, and the mean, with rejection sampling from the uniform sphere.
    th, n = 1.0, 100_000
    mu = _unit(3, 2).expand(n, 3)
    x = sample_cap(mu, th, _gen(3))
    assert torch.allclose(x.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-12)
    c = x[:, 2]
    assert float(c.min()) >= math.cos(th) - 1e-9
    qs = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    want = math.cos(th) + qs * (1 - math.cos(th))
    assert torch.allclose(torch.quantile(c, qs), want, atol=0.006)
    z = torch.randn(400_000, 3, generator=_gen(4), dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True)
    kept = z[z[:, 2] >= math.cos(th)]
    assert float(c.mean()) == pytest.approx(float(kept[:, 2].mean()), abs=0.005)
    # Azimuth uniform too: the mean of the tangent components vanishes.
    assert float(x[:, 0].mean()) == pytest.approx(0.0, abs=0.005)


def test_sample_cap_high_dimension_matches_quadrature() -> None:
    th, d, n = 0.5, 200, 20_000
    x = sample_cap(_unit(d, 0).expand(n, d), th, _gen(5))
    c = x[:, 0]
    assert float(c.min()) >= math.cos(th) - 1e-9
    assert float(c.mean()) == pytest.approx(cap_mean_cos(th, d), abs=5 * float(c.std()) / n**0.5)


def test_sample_cap_coupled_latent_is_a_shrink() -> None:
    # Same latent, two radii: same tangent direction, smaller angle.
    d, n = 6, 1000
    g = torch.randn(n, d, generator=_gen(6), dtype=torch.float64)
    u = torch.rand(n, generator=_gen(7), dtype=torch.float64)
    mu = _unit(d, 0).expand(n, d)
    big = sample_cap(mu, 0.6, latent=(g, u))
    small = sample_cap(mu, 0.2, latent=(g, u))
    assert bool((small[:, 0] >= big[:, 0] - 1e-12).all())
    tb = torch.nn.functional.normalize(big[:, 1:], dim=1)
    ts = torch.nn.functional.normalize(small[:, 1:], dim=1)
    assert torch.allclose(tb, ts, atol=1e-9)


def test_rotation_is_rigid_and_moves_the_centre_by_alpha() -> None:
    d = 5
    mu = _unit(d, 0)[None]
    v = _unit(d, 3)[None]
    alpha = math.radians(40)
    x = torch.randn(50, d, generator=_gen(8), dtype=torch.float64)
    rx = theory._rotate(x, mu.expand(50, d), v.expand(50, d), alpha)

    # Isometry: pairwise distances and norms are preserved.
    def pdist(z: torch.Tensor) -> torch.Tensor:
        return (z[:, None] - z[None]).norm(dim=-1)

    assert torch.allclose(pdist(rx), pdist(x), atol=1e-12)
    assert torch.allclose(rx.norm(dim=1), x.norm(dim=1), atol=1e-12)
    rm = theory._rotate(mu, mu, v, alpha)
    assert float((rm * mu).sum()) == pytest.approx(math.cos(alpha))


# --------------------------------------------------------------------------- simulation


def test_simulation_matches_cap_closed_form_expectations() -> None:
    # Cosine distance on caps: E = 1 - m(r_new) m(r_old) <mu', mu>, exact under the model;
    # for different classes <mu_a, mu_b> = -1/(K-1) and, after a rotation by alpha,
    # the average over b != a is cos(alpha) * (-1/(K-1)) (the vertices sum to zero).
    K, d, ro, rn = 6, 5, 0.6, 0.3
    for shift in (0.0, 25.0):
        r = simulate(
            K=K, d=d, r_old=ro, r_new=rn, shift=shift, region="cap", metric="cosine",
            n_pairs=25_000, seed=1,
        )  # fmt: skip
        ca = math.cos(math.radians(shift))
        checks = [
            (r.same_expect_new, expected_cosine_distance_caps(ca, rn, ro, d), r.same_ci_new),
            (r.same_expect_old, expected_cosine_distance_caps(1.0, ro, ro, d), r.same_ci_old),
            (
                r.diff_expect_new,
                expected_cosine_distance_caps(-ca / (K - 1), rn, ro, d),
                r.diff_ci_new,
            ),
            (
                r.diff_expect_old,
                expected_cosine_distance_caps(-1 / (K - 1), ro, ro, d),
                r.diff_ci_old,
            ),
        ]
        for got, want, hw in checks:
            # hw is the 95 % half-width (1.96 sd); 2.5 hw is about 5 standard errors.
            assert got == pytest.approx(want, abs=2.5 * hw + 1e-12)


def test_simulation_matches_ball_closed_form_raw() -> None:
    # Raw Euclidean, same class, stationary: E|h_i^k - h_j^k| is not closed-form, but
    # E|h_i^t - h_j^k|^2 is; check the model through the squared distance of its samples.
    K, d, ro, rn = 4, 3, 0.5, 0.2
    gen = _gen(0)
    m = theory.RegionModel(K, d, ro, rn, 0.0, "ball", "independent", gen)
    cls = torch.randint(0, K, (100_000,), generator=gen)
    new, old = m.query(cls)
    gal = m.old(cls)
    for a, r1 in ((new, rn), (old, ro)):
        sq = (a - gal).pow(2).sum(dim=1)
        want = expected_sq_distance_balls(0.0, r1, ro, d)
        assert float(sq.mean()) == pytest.approx(want, abs=5 * float(sq.std()) / 100_000**0.5)


@pytest.mark.parametrize(
    ("region", "metric"), [("ball", "euclidean"), ("ball", "cosine"), ("cap", "euclidean")]
)
def test_stationary_tighter_new_model_holds_in_expectation(region: str, metric: str) -> None:
    r = simulate(K=10, r_old=0.5, r_new=0.3, region=region, metric=metric, n_pairs=20_000)
    assert r.same_holds_in_expectation and r.diff_holds_in_expectation
    # Not a coin flip: both margins clear their 95 % intervals.
    assert -r.same_gap > r.same_gap_ci
    assert r.diff_gap > r.diff_gap_ci
    assert "holds in expectation" in montecarlo.verdict(r)


def test_corollary1_per_pair_fraction_visibly_below_one() -> None:
    r = simulate(K=10, r_old=0.5, r_new=0.3, n_pairs=20_000)
    assert r.same_holds_in_expectation
    assert 0.5 < r.same_frac < 0.9
    assert r.diff_frac < 0.9
    # Even when every sample moves towards its own centre, some same-class pairs separate.
    s = simulate(K=10, r_old=0.5, r_new=0.3, coupling="shrink", n_pairs=20_000)
    assert r.same_frac < s.same_frac < 0.995
    assert "Corollary 1" in montecarlo.verdict(r)


def test_large_shift_breaks_same_class_inequality() -> None:
    r = simulate(K=10, r_old=0.5, r_new=0.3, shift=45.0, n_pairs=20_000)
    assert not r.same_holds_in_expectation
    assert r.same_gap > r.same_gap_ci  # clearly, not by noise
    assert "fails in expectation (same-class" in montecarlo.verdict(r)


def test_critical_shift_separates_holding_from_failing() -> None:
    ro, rn, d = 0.5, 0.3, 9
    crit = critical_shift_deg(ro, rn, d)
    assert 10.0 < crit < 40.0
    # The shrink coupling keeps the marginals (so the expectations) and cuts the noise
    # of the paired gaps; the different-class gap is small, hence the wider margin.
    kw = dict(K=10, d=d, r_old=ro, r_new=rn, region="cap", metric="cosine", coupling="shrink")
    kw["n_pairs"] = 20_000
    assert simulate(shift=crit - 6.0, **kw).same_holds_in_expectation
    assert not simulate(shift=crit + 6.0, **kw).same_holds_in_expectation
    below = simulate(shift=crit - 12.0, **kw)
    above = simulate(shift=crit + 12.0, **kw)
    assert below.diff_gap > below.diff_gap_ci
    assert -above.diff_gap > above.diff_gap_ci
    assert critical_shift_deg(0.3, 0.5, d) == 0.0  # a looser new model has no slack


def test_raw_euclidean_ball_breaks_the_different_class_half() -> None:
    # The finding documented in the module: without normalisation a tighter new
    # class is on average closer to the other classes (|x - y| is subharmonic).
    r = simulate(K=10, r_old=0.5, r_new=0.3, normalize=False, n_pairs=20_000)
    assert r.same_holds_in_expectation
    assert not r.diff_holds_in_expectation
    assert -r.diff_gap > r.diff_gap_ci
    assert any("raw" in n for n in r.notes)


def test_finite_population_path_agrees_with_iid_path() -> None:
    a = simulate(K=5, r_old=0.5, r_new=0.3, n_pairs=30_000, seed=2)
    b = simulate(K=5, r_old=0.5, r_new=0.3, n_pairs=30_000, n_per_class=300, seed=2)
    assert b.n_per_class == 300
    assert b.same_expect_old == pytest.approx(a.same_expect_old, abs=0.02)
    assert b.same_frac == pytest.approx(a.same_frac, abs=0.05)
    assert b.same_holds_in_expectation and b.diff_holds_in_expectation


def test_deterministic_for_a_seed_and_embedding_in_larger_d() -> None:
    a = simulate(K=4, d=12, n_pairs=5000, seed=3)
    b = simulate(K=4, d=12, n_pairs=5000, seed=3)
    c = simulate(K=4, d=12, n_pairs=5000, seed=4)
    assert a == b
    assert a.same_frac != c.same_frac
    assert a.d == 12 and a.K == 4
    assert simulate(K=2, n_pairs=100).d == 2  # K=2 defaults to d=2 (rotations need a plane)


def test_sweep_covers_every_combination() -> None:
    rs = montecarlo.sweep(r_news=(0.2, 0.4), shifts=(0.0, 20.0), r_old=0.5, K=4, n_pairs=2000)
    assert [(r.shift, r.r_new) for r in rs] == [(0.0, 0.2), (0.0, 0.4), (20.0, 0.2), (20.0, 0.4)]
    # Common random numbers: the old side does not depend on r_new or the shift.
    assert len({r.same_expect_old for r in rs}) == 1


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(K=1), "K must be"),
        (dict(K=10, d=5), "d must be >= K-1"),
        (dict(r_old=-0.1), "radii must be >= 0"),
        (dict(r_new=-0.1), "radii must be >= 0"),
        (dict(region="cube"), "region"),
        (dict(metric="l1"), "metric"),
        (dict(coupling="x"), "coupling"),
        (dict(region="cap", r_old=4.0), "radians"),
        (dict(n_pairs=1), "n_pairs"),
    ],
)
def test_bad_values_raise_clear_errors(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        simulate(**{"n_pairs": 100, **kw})


def test_looser_new_model_is_allowed_but_flagged() -> None:
    r = simulate(K=4, r_old=0.3, r_new=0.5, n_pairs=2000)
    assert any("r_new > r_old" in n for n in r.notes)
    assert "verdict" in r.to_dict()


def test_plots_are_written(tmp_path) -> None:
    rs = montecarlo.sweep(r_news=(0.2, 0.4), shifts=(0.0, 20.0), K=4, n_pairs=500)
    p1 = figures.plot_theory(rs, tmp_path / "a" / "t.png")
    p2 = figures.plot_theory_2d(tmp_path / "t2.png", n=20, region="cap")
    for p in (p1, p2):
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
