"""Definition 1 on features (against a slow double loop and known cases) and stationarity stats."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from compatkit.analysis import stats as analysis
from compatkit.analysis.stats import definition1_pairs, mean_ci, stationarity_stats
from compatkit.simplex import simplex_vertices


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clusters(labels: torch.Tensor, K: int, noise: float, seed: int) -> torch.Tensor:
    """Features near the d-Simplex vertex of each label."""
    v = simplex_vertices(K, torch.float64)
    return v[labels] + noise * torch.randn(
        labels.numel(), K - 1, generator=_gen(seed), dtype=torch.float64
    )


def _slow(new_q, old_q, old_g, lq, lg, metric, same_set=False) -> dict:
    """Definition 1 by an obvious double loop over all (i, j) pairs."""

    def dist(a, b):
        a, b = a / a.norm(), b / b.norm()
        return float(1 - a @ b) if metric == "cosine" else float((a - b).norm())

    out = {"same": ([], []), "diff": ([], [])}
    for i in range(len(lq)):
        for j in range(len(lg)):
            if same_set and i == j:
                continue
            key = "same" if lq[i] == lg[j] else "diff"
            out[key][0].append(dist(new_q[i], old_g[j]))
            out[key][1].append(dist(old_q[i], old_g[j]))
    res = {}
    for key, (dn, do) in out.items():
        ok = [a <= b if key == "same" else a >= b for a, b in zip(dn, do, strict=True)]
        res[key] = {
            "n": len(dn),
            "frac": sum(ok) / len(ok),
            "e_new": sum(dn) / len(dn),
            "e_old": sum(do) / len(do),
        }
    return res


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("same_set", [False, True])
def test_exhaustive_matches_slow_double_loop(metric: str, same_set: bool) -> None:
    K = 4
    lq = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 2, 0, 1, 3])
    lg = lq.clone() if same_set else torch.tensor([0, 1, 1, 2, 2, 3, 3, 0, 1, 2])
    old_q = _clusters(lq, K, 0.4, 1)
    new_q = _clusters(lq, K, 0.25, 2)
    old_g = old_q.clone() if same_set else _clusters(lg, K, 0.4, 3)
    got = definition1_pairs(new_q, old_q, old_g, lq, lg, metric, same_set=same_set)
    want = _slow(new_q, old_q, old_g, lq.tolist(), lg.tolist(), metric, same_set)
    for key in ("same", "diff"):
        g, w = got[key], want[key]
        assert g["exhaustive"] and g["n_pairs"] == g["n_total"] == w["n"]
        assert g["frac"] == pytest.approx(w["frac"], abs=1e-12)
        assert g["expect_new"]["mean"] == pytest.approx(w["e_new"], abs=1e-12)
        assert g["expect_old"]["mean"] == pytest.approx(w["e_old"], abs=1e-12)
        want_holds = w["e_new"] <= w["e_old"] if key == "same" else w["e_new"] >= w["e_old"]
        assert g["holds_in_expectation"] == want_holds
    if same_set:
        # 12 samples: sum over classes of n_c (n_c - 1) ordered same-class pairs, i != j.
        counts = torch.bincount(lq)
        assert got["same"]["n_total"] == int((counts * (counts - 1)).sum())
        assert got["same"]["n_total"] + got["diff"]["n_total"] == 12 * 11


def test_identical_models_satisfy_every_pair_with_equality() -> None:
    lq = torch.arange(30) % 5
    f = _clusters(lq, 5, 0.5, 4)
    for metric in ("cosine", "euclidean"):
        r = definition1_pairs(f.clone(), f, f, lq, lq, metric, same_set=True)
        for key in ("same", "diff"):
            assert r[key]["frac"] == 1.0  # equality satisfies both <= and >=
            assert r[key]["gap_new_minus_old"]["mean"] == 0.0
            assert r[key]["holds_in_expectation"] is True


def test_new_features_on_gallery_centroid_shrink_same_class_distances() -> None:
    # Cosine: the normalised class mean c maximises <c, sum_j g_j> over unit vectors,
    # so each query's mean same-class distance can only go down.
    K = 6
    lq = torch.arange(60) % K
    lg = torch.arange(48) % K
    old_q = _clusters(lq, K, 0.6, 5)
    old_g = _clusters(lg, K, 0.6, 6)
    gn = F.normalize(old_g, dim=1)
    cent = F.normalize(torch.zeros(K, K - 1, dtype=torch.float64).index_add_(0, lg, gn), dim=1)
    new_q = cent[lq]
    r = definition1_pairs(new_q, old_q, old_g, lq, lg, "cosine")
    assert r["same"]["holds_in_expectation"]
    assert r["same"]["expect_new"]["mean"] < r["same"]["expect_old"]["mean"] - 0.05
    assert r["same"]["frac"] > 0.7
    assert r["diff"]["holds_in_expectation"]


def test_swapped_classes_fail_every_same_class_pair() -> None:
    # New model maps class c where the old one put class c+1: tight, well separated
    # clusters, so every same-class pair gets farther apart.
    K = 5
    lq = torch.arange(40) % K
    lg = torch.arange(25) % K
    old_q = _clusters(lq, K, 0.05, 7)
    old_g = _clusters(lg, K, 0.05, 8)
    new_q = _clusters((lq + 1) % K, K, 0.05, 9)
    r = definition1_pairs(new_q, old_q, old_g, lq, lg, "euclidean")
    assert r["same"]["frac"] == 0.0
    assert not r["same"]["holds_in_expectation"]
    # Different-class pairs whose gallery class is the swap target (c+1) now look "same"
    # and all fail (1 in K-1 of them); the others compare two equal vertex distances
    # up to noise, a coin flip.
    assert r["diff"]["frac"] <= 1 - 1 / (K - 1)
    assert r["diff"]["frac"] == pytest.approx(0.5 * (K - 2) / (K - 1), abs=0.08)


def test_sampled_estimates_agree_with_exhaustive_on_imbalanced_classes() -> None:
    # Uniform over pairs needs queries weighted by their number of partners: with very
    # unequal classes a naive "uniform query, then uniform partner" would be biased.
    K = 4
    sizes = torch.tensor([600, 150, 40, 10])
    lq = torch.repeat_interleave(torch.arange(K), sizes)
    old = _clusters(lq, K, 0.5, 10)
    new = old + 0.3 * torch.randn(old.shape, generator=_gen(11), dtype=torch.float64)
    full = definition1_pairs(new, old, old, lq, lq, "cosine", max_pairs=10**7, same_set=True)
    samp = definition1_pairs(new, old, old, lq, lq, "cosine", max_pairs=40_000, same_set=True)
    for key in ("same", "diff"):
        assert full[key]["exhaustive"] and not samp[key]["exhaustive"]
        assert samp[key]["n_pairs"] == 40_000
        assert samp[key]["n_total"] == full[key]["n_total"]
        for side in ("expect_new", "expect_old"):
            hw = samp[key][side]["half_width"]
            assert samp[key][side]["mean"] == pytest.approx(full[key][side]["mean"], abs=2.5 * hw)
        assert samp[key]["frac"] == pytest.approx(
            full[key]["frac"], abs=2.5 * samp[key]["frac_half_width"]
        )


def test_pair_sampler_respects_groups_and_skips_self_pairs() -> None:
    lq = torch.tensor([0, 0, 0, 1, 1, 2])
    n = len(lq)
    order = torch.argsort(lq, stable=True)
    counts = torch.bincount(lq)
    starts = torch.cumsum(counts, 0) - counts
    cnt, st = counts[lq], starts[lq]
    gen = _gen(12)
    i, j = analysis._sample(lq, cnt - 1, st, cnt, order, 60_000, True, True, gen)
    assert bool((lq[i] == lq[j]).all()) and bool((i != j).all())
    # The 3*2 + 2*1 = 8 ordered same-class pairs are equally likely.
    freq = torch.bincount(i * n + j, minlength=n * n).double() / 60_000
    nz = freq[freq > 0]
    assert nz.numel() == 8
    assert torch.allclose(nz, torch.full_like(nz, 1 / 8), atol=0.01)
    i, j = analysis._sample(lq, n - cnt, st, cnt, order, 60_000, False, True, gen)
    assert bool((lq[i] != lq[j]).all())
    freq = torch.bincount(i * n + j, minlength=n * n).double() / 60_000
    nz = freq[freq > 0]
    n_diff = n * n - int((counts**2).sum())
    assert nz.numel() == n_diff
    assert torch.allclose(nz, torch.full_like(nz, 1 / n_diff), atol=0.01)


def test_deterministic_and_generator_seeded() -> None:
    lq = torch.arange(400) % 7
    f = _clusters(lq, 7, 0.5, 13)
    g = f + 0.1
    a = definition1_pairs(g, f, f, lq, lq, max_pairs=1000, same_set=True)
    b = definition1_pairs(g, f, f, lq, lq, max_pairs=1000, same_set=True)
    c = definition1_pairs(g, f, f, lq, lq, max_pairs=1000, same_set=True, generator=_gen(99))
    assert a == b
    assert a != c


def test_empty_group_is_reported_not_crashed() -> None:
    lq = torch.zeros(5, dtype=torch.long)
    f = _clusters(lq, 3, 0.3, 14)
    r = definition1_pairs(f + 0.01, f, f, lq, lq, "cosine", same_set=True)
    assert r["diff"]["n_pairs"] == 0 and r["diff"]["frac"] is None
    assert r["diff"]["holds_in_expectation"] is None
    assert r["same"]["n_pairs"] == 20


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(feat_new_q=torch.zeros(4, 3)), "share one space"),
        (dict(labels_q=torch.zeros(3)), "query rows"),
        (dict(labels_g=torch.zeros(2)), "gallery rows"),
        (dict(metric="manhattan"), "metric"),
        (dict(same_set=True), "same_set"),
        (dict(max_pairs=0), "max_pairs"),
    ],
)
def test_bad_inputs_raise(kw: dict, msg: str) -> None:
    args = dict(
        feat_new_q=torch.randn(4, 2),
        feat_old_q=torch.randn(4, 2),
        feat_old_g=torch.randn(5, 2),
        labels_q=torch.zeros(4),
        labels_g=torch.zeros(5),
    )
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        definition1_pairs(**args)


def test_mean_ci_normal_approximation() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    r = mean_ci(x)
    sd = math.sqrt(sum((v - 2.5) ** 2 for v in (1, 2, 3, 4)) / 3)
    assert r["mean"] == 2.5 and r["n"] == 4
    assert r["half_width"] == pytest.approx(1.959964 * sd / 2, rel=1e-6)
    assert r["low"] == pytest.approx(2.5 - r["half_width"])
    assert mean_ci(torch.tensor([]))["mean"] is None
    assert mean_ci(torch.tensor([1.0]))["half_width"] is None


def test_stationarity_stats_by_hand() -> None:
    d30, d15, d22 = math.radians(30), math.radians(15), math.radians(22.5)
    feats = torch.tensor(
        [
            [2 * math.cos(d30), 2 * math.sin(d30)],  # class 0, +30° from (1, 0), norm 2
            [3 * math.cos(d30), -3 * math.sin(d30)],  # class 0, -30°, norm 3
            [0.0, 5.0],  # class 1, on its vertex (0, 1)
            [1.0, 0.0],  # class 1, 90° from it
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 0, 1, 1])
    verts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    s = stationarity_stats(feats, labels, verts)
    c0, c1 = s["per_class"][0], s["per_class"][1]
    assert c0["n"] == 2 and c1["n"] == 2
    assert c0["mean_angle_to_vertex_deg"] == pytest.approx(30.0, abs=1e-9)
    assert c0["mean_direction_angle_deg"] == pytest.approx(0.0, abs=1e-5)
    assert c0["spread"] == pytest.approx(2 * math.sin(d15), abs=1e-9)  # chord of 30°
    assert c1["mean_angle_to_vertex_deg"] == pytest.approx(45.0, abs=1e-9)
    assert c1["mean_direction_angle_deg"] == pytest.approx(45.0, abs=1e-6)
    assert c1["spread"] == pytest.approx(2 * math.sin(d22), abs=1e-9)  # chord of 45°
    assert s["mean_angle_to_vertex_deg"] == pytest.approx(37.5, abs=1e-9)
    assert s["mean_direction_angle_deg"] == pytest.approx(22.5, abs=1e-5)
    assert s["mean_spread"] == pytest.approx(math.sin(d15) + math.sin(d22), abs=1e-9)
    assert s["num_classes"] == 2

    learnable = stationarity_stats(feats, labels, None)
    assert learnable["mean_angle_to_vertex_deg"] is None
    assert learnable["per_class"][1]["mean_direction_angle_deg"] is None
    assert learnable["mean_spread"] == pytest.approx(s["mean_spread"])


def test_stationarity_stats_rejects_inconsistent_vertices() -> None:
    feats = torch.randn(3, 2)
    labels = torch.tensor([0, 0, 1])
    verts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="different vertices"):
        stationarity_stats(feats, labels, verts)
    with pytest.raises(ValueError, match="labels"):
        stationarity_stats(feats, labels[:2], None)
