"""Definition 1 and stationarity, measured on real features.

Paper: Biondi et al., "Stationary Representations: Optimally Approximating
Compatibility and Implications for Improved Model Replacements", CVPR 2024,
Definition 1 (compatibility, from Shen et al., "Towards Backward-Compatible
Representation Learning", CVPR 2020) and Theorem 1 / Corollary 1 (stationary
features satisfy Definition 1 *in expectation*, never for every pair).

For an old model k and a newer model t, query samples i (features under both
models, ``h_i^t`` and ``h_i^k``) and gallery samples j (old features ``h_j^k``),
Definition 1 asks

- same class (y_i = y_j):      d(h_i^t, h_j^k) <= d(h_i^k, h_j^k)
- different class (y_i != y_j): d(h_i^t, h_j^k) >= d(h_i^k, h_j^k)

:func:`definition1_pairs` measures both the per-pair satisfaction fractions
(which Corollary 1 says cannot all be 1 in general) and the two expectations
that Theorem 1 is about. :func:`stationarity_stats` measures how close a
model's features sit to their fixed-classifier vertices and how tight each
class is (the hyperball radius of Theorem 1).

Distances are always computed on L2-normalised features, for both metrics:
retrieval compares normalised features (templates are means of normalised
features, re-normalised; search is by cosine), so the norm of a raw feature is
not something a gallery ever sees. On the unit sphere the squared Euclidean
distance is ``2 * (1 - cos)``, so the two metrics rank pairs identically; the
Euclidean one is reported because BCT states Definition 1 with it.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = [
    "Z95",
    "centre_drift_deg",
    "centre_separation_deg",
    "class_mean_directions",
    "definition1_pairs",
    "mean_ci",
    "pair_distances",
    "stationarity_stats",
    "torch_threads",
]

Z95 = 1.959963984540054
"""Two-sided 95 % quantile of the standard normal (normal-approximation intervals)."""

METRICS = ("cosine", "euclidean")

# Elements gathered per chunk (rows x dim) when computing pair distances, and
# mask cells per chunk when enumerating pairs: keeps peak memory to a few
# hundred MB whatever the number of pairs or the feature dimension.
_CHUNK_ELEMS = 1 << 22
_MASK_CELLS = 1 << 24


def mean_ci(x: torch.Tensor) -> dict:
    """Mean of ``x`` with a 95 % normal-approximation interval: mean ± 1.96·sd/sqrt(n).

    The values are treated as independent draws. Pairs sampled from one finite
    set of features share samples, so the interval is then a slight
    underestimate; with many pairs per sample it is still a fair scale of the
    Monte Carlo noise. Undefined quantities (n = 0, or sd with n = 1) are None
    so that the dict serialises to valid JSON.
    """
    x = x.detach().double().flatten()
    n = int(x.numel())
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "half_width": None, "low": None, "high": None}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "half_width": None, "low": None, "high": None}
    sd = float(x.std(unbiased=True))
    hw = Z95 * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half_width": hw, "low": mean - hw, "high": mean + hw}


def pair_distances(
    a: torch.Tensor, b: torch.Tensor, metric: str = "cosine", normalize: bool = True
) -> torch.Tensor:
    """Row-wise distance ``d(a[n], b[n])`` in float64.

    ``cosine`` is ``1 - cos`` (normalisation is implied); ``euclidean`` is the
    L2 distance, of the L2-normalised rows unless ``normalize`` is False (the
    raw-space variant is only used by the theory model, see ``theory.py``).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
    a = a.double()
    b = b.double()
    if metric == "cosine" or normalize:
        a = F.normalize(a, dim=1)
        b = F.normalize(b, dim=1)
    if metric == "cosine":
        return 1.0 - (a * b).sum(dim=1)
    return (a - b).norm(dim=1)


def _chunked_pair_distances(
    x: torch.Tensor,
    y: torch.Tensor,
    ii: torch.Tensor,
    jj: torch.Tensor,
    metric: str,
    normalize: bool,
) -> torch.Tensor:
    """``d(x[ii[n]], y[jj[n]])`` for every n, gathered in chunks to bound memory."""
    out = torch.empty(ii.numel(), dtype=torch.float64)
    step = max(1, _CHUNK_ELEMS // max(1, x.shape[1]))
    for s in range(0, ii.numel(), step):
        i = ii[s : s + step].to(x.device)
        j = jj[s : s + step].to(y.device)
        out[s : s + step] = pair_distances(x[i], y[j], metric, normalize).cpu()
    return out


def _frac_ci(ok: torch.Tensor) -> tuple[float | None, float | None]:
    """Fraction of True and its 95 % normal-approximation half-width (binomial)."""
    n = ok.numel()
    if n == 0:
        return None, None
    p = float(ok.double().mean())
    return p, Z95 * math.sqrt(p * (1.0 - p) / n)


def _group_stats(d_new: torch.Tensor, d_old: torch.Tensor, same: bool) -> dict:
    """Per-pair satisfaction and the two expectations of one group (same or different class)."""
    ok = d_new <= d_old if same else d_new >= d_old
    frac, frac_hw = _frac_ci(ok)
    e_new, e_old = mean_ci(d_new), mean_ci(d_old)
    # The gap is a paired difference (same i and j on both sides), so its own
    # interval is much tighter than the two marginal intervals would suggest.
    gap = mean_ci(d_new - d_old)
    holds = None
    if e_new["mean"] is not None:
        holds = e_new["mean"] <= e_old["mean"] if same else e_new["mean"] >= e_old["mean"]
    return {
        "n_pairs": int(d_new.numel()),
        "frac": frac,
        "frac_half_width": frac_hw,
        "expect_new": e_new,
        "expect_old": e_old,
        "gap_new_minus_old": gap,
        "holds_in_expectation": holds,
    }


def _enumerate(
    lq: torch.Tensor, lg: torch.Tensor, same: bool, same_set: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """All (i, j) pairs of one group, by chunks of queries (vectorised within a chunk)."""
    ng = lg.numel()
    step = max(1, _MASK_CELLS // max(1, ng))
    ii, jj = [], []
    for s in range(0, lq.numel(), step):
        q = lq[s : s + step]
        mask = (q[:, None] == lg[None, :]) if same else (q[:, None] != lg[None, :])
        if same and same_set:
            rows = torch.arange(q.numel())
            mask[rows, rows + s] = False  # i == j is one sample, not a pair
        i, j = mask.nonzero(as_tuple=True)
        ii.append(i + s)
        jj.append(j)
    return torch.cat(ii), torch.cat(jj)


def _sample(
    lq: torch.Tensor,
    counts_per_query: torch.Tensor,
    start_per_query: torch.Tensor,
    class_count_per_query: torch.Tensor,
    order: torch.Tensor,
    n: int,
    same: bool,
    same_set: bool,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs drawn uniformly (with replacement) from all pairs of one group.

    Queries are drawn with probability proportional to their number of
    partners, then a partner uniformly, so every pair of the group is equally
    likely. Gallery indices are addressed through ``order`` (the gallery sorted
    by label): the same-class partners of a query form one contiguous block,
    its different-class partners everything outside that block.
    """
    i = torch.multinomial(counts_per_query.double(), n, replacement=True, generator=generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    idx = (u * counts_per_query[i].double()).floor().long()
    idx = torch.minimum(idx, counts_per_query[i] - 1)  # guard u*c rounding up to c
    start = start_per_query[i]
    if same:
        k = start + idx
        if same_set:
            # Skip the query's own position inside its class block.
            pos = torch.empty_like(order)
            pos[order] = torch.arange(order.numel())
            k = k + (k >= pos[i]).long()
    else:
        k = torch.where(idx < start, idx, idx + class_count_per_query[i])
    return i, order[k]


def definition1_pairs(
    feat_new_q: torch.Tensor,
    feat_old_q: torch.Tensor,
    feat_old_g: torch.Tensor,
    labels_q: torch.Tensor,
    labels_g: torch.Tensor,
    metric: str = "cosine",
    max_pairs: int = 200_000,
    generator: torch.Generator | None = None,
    same_set: bool = False,
    normalize: bool = True,
) -> dict:
    """Check Definition 1 per pair and in expectation for an old model k and a new model t.

    Args:
        feat_new_q: ``(Nq, d)`` query features by the new model, ``h_i^t``.
        feat_old_q: ``(Nq, d)`` the same queries by the old model, ``h_i^k``.
        feat_old_g: ``(Ng, d)`` gallery features by the old model, ``h_j^k``.
        labels_q, labels_g: ``(Nq,)`` and ``(Ng,)`` class labels (one label space).
        metric: ``"cosine"`` (1 - cos) or ``"euclidean"``, both on normalised features.
        max_pairs: budget *per group*: a group (same-class or different-class
            pairs) with at most this many pairs is enumerated exhaustively,
            a larger one is sampled uniformly with replacement.
        generator: torch generator for the sampling; None uses a fixed seed
            (0), so repeated calls give identical answers.
        same_set: the query and gallery sets are the same samples (row n of
            both is one sample); pairs with i == j are then excluded.
        normalize: L2-normalise before the Euclidean distance (default, see
            the module docstring); cosine always normalises.

    Returns:
        ``{"metric", "normalize", "same_set", "same": G, "diff": G}`` where each
        group G has ``n_pairs``, ``n_total`` (pairs in the group), ``exhaustive``,
        ``frac`` (per-pair satisfaction) with ``frac_half_width``,
        ``expect_new`` = E[d(h_i^t, h_j^k)] and ``expect_old`` = E[d(h_i^k, h_j^k)]
        (each ``{n, mean, sd, half_width, low, high}``), ``gap_new_minus_old``
        (paired) and ``holds_in_expectation`` (E_new <= E_old for same class,
        >= for different class; None for an empty group).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
    if feat_new_q.ndim != 2 or feat_old_q.ndim != 2 or feat_old_g.ndim != 2:
        raise ValueError("features must be 2-D (samples, dim) tensors")
    nq, ng = feat_old_q.shape[0], feat_old_g.shape[0]
    if feat_new_q.shape[0] != nq or labels_q.numel() != nq:
        raise ValueError(
            f"query rows disagree: new {feat_new_q.shape[0]}, old {nq}, labels {labels_q.numel()}"
        )
    if labels_g.numel() != ng:
        raise ValueError(f"gallery rows disagree: features {ng}, labels {labels_g.numel()}")
    if not (feat_new_q.shape[1] == feat_old_q.shape[1] == feat_old_g.shape[1]):
        raise ValueError(
            "Definition 1 compares new and old features directly, so they must share one space; "
            f"got dims new {feat_new_q.shape[1]}, old query {feat_old_q.shape[1]}, "
            f"old gallery {feat_old_g.shape[1]}"
        )
    if nq == 0 or ng == 0:
        raise ValueError(f"need at least one query and one gallery sample (got {nq}, {ng})")
    if same_set and nq != ng:
        raise ValueError(f"same_set=True needs as many queries as gallery samples ({nq} vs {ng})")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)

    lq = labels_q.detach().flatten().long().cpu()
    lg = labels_g.detach().flatten().long().cpu()
    order = torch.argsort(lg, stable=True)
    classes, counts = torch.unique(lg, return_counts=True)  # sorted, as lg[order] is
    starts = torch.cumsum(counts, 0) - counts
    # Per query: its class's block in the sorted gallery (empty if the class is absent).
    pos = torch.searchsorted(classes, lq).clamp(max=classes.numel() - 1)
    found = classes[pos] == lq
    cls_count = torch.where(found, counts[pos], torch.zeros_like(lq))
    cls_start = torch.where(found, starts[pos], torch.zeros_like(lq))
    n_same_q = cls_count - (1 if same_set else 0)
    n_diff_q = ng - cls_count

    out: dict = {"metric": metric, "normalize": normalize, "same_set": same_set}
    for name, same, per_q in (("same", True, n_same_q), ("diff", False, n_diff_q)):
        total = int(per_q.sum())
        if total <= max_pairs:
            ii, jj = _enumerate(lq, lg, same, same_set)
        else:
            ii, jj = _sample(
                lq, per_q, cls_start, cls_count, order, max_pairs, same, same_set, generator
            )
        d_new = _chunked_pair_distances(feat_new_q, feat_old_g, ii, jj, metric, normalize)
        d_old = _chunked_pair_distances(feat_old_q, feat_old_g, ii, jj, metric, normalize)
        g = _group_stats(d_new, d_old, same)
        g["n_total"] = total
        g["exhaustive"] = total <= max_pairs
        out[name] = g
    return out


def _angle_deg(cos: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def stationarity_stats(
    features: torch.Tensor,
    labels: torch.Tensor,
    vertices_for_labels: torch.Tensor | None = None,
) -> dict:
    """How stationary and how tight each class is, on L2-normalised features.

    Theorem 1 models a class as a hyperball (or spherical cap) centred at its
    fixed-classifier vertex: the centre must not move between models and the
    radius should shrink as models improve. This measures both, per class:

    - ``mean_angle_to_vertex_deg``: mean angle between each normalised feature
      and its class vertex (None for learnable heads, which have no fixed vertex);
    - ``mean_direction_angle_deg``: angle between the class-mean direction and
      the vertex (how far the class centre sits from where the head put it);
    - ``spread``: mean Euclidean distance of the normalised features from their
      normalised class mean, the class's "hyperball radius" on the sphere.

    Args:
        features: ``(N, d)`` features of one model.
        labels: ``(N,)`` class labels.
        vertices_for_labels: ``(N, d)`` the head vertex of each sample's label
            (e.g. ``head.weight[class_map.rows(labels)]``), or None.

    Returns:
        ``{"per_class": {label: {...}}, "num_classes", "mean_angle_to_vertex_deg",
        "mean_direction_angle_deg", "mean_spread"}``; the three means are
        unweighted averages over classes (each class counts once, as in retrieval).
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (N, d), got shape {tuple(features.shape)}")
    n = features.shape[0]
    if labels.numel() != n:
        raise ValueError(f"{n} features but {labels.numel()} labels")
    if vertices_for_labels is not None and vertices_for_labels.shape != features.shape:
        raise ValueError(
            f"vertices_for_labels must match features {tuple(features.shape)}, "
            f"got {tuple(vertices_for_labels.shape)}"
        )
    x = F.normalize(features.detach().double().cpu(), dim=1)
    lab = labels.detach().flatten().long().cpu()
    classes, inv, counts = torch.unique(lab, return_inverse=True, return_counts=True)
    c = classes.numel()
    d = x.shape[1]

    mean_dir = torch.zeros(c, d, dtype=torch.float64).index_add_(0, inv, x)
    mean_dir = F.normalize(mean_dir, dim=1)
    dist_to_mean = (x - mean_dir[inv]).norm(dim=1)
    spread = torch.zeros(c, dtype=torch.float64).index_add_(0, inv, dist_to_mean) / counts

    ang_vertex = ang_dir = None
    if vertices_for_labels is not None:
        v = F.normalize(vertices_for_labels.detach().double().cpu(), dim=1)
        # One vertex per class: take each class's first sample and check the rest agree.
        first = torch.full((c,), n, dtype=torch.long).scatter_reduce_(
            0, inv, torch.arange(n), reduce="amin"
        )
        cls_v = v[first]
        if not torch.allclose(v, cls_v[inv], atol=1e-6):
            raise ValueError("vertices_for_labels gives different vertices to one class")
        per_sample = _angle_deg((x * v).sum(dim=1))
        ang_vertex = torch.zeros(c, dtype=torch.float64).index_add_(0, inv, per_sample) / counts
        ang_dir = _angle_deg((mean_dir * cls_v).sum(dim=1))

    per_class = {}
    for k in range(c):
        per_class[int(classes[k])] = {
            "n": int(counts[k]),
            "mean_angle_to_vertex_deg": None if ang_vertex is None else float(ang_vertex[k]),
            "mean_direction_angle_deg": None if ang_dir is None else float(ang_dir[k]),
            "spread": float(spread[k]),
        }
    return {
        "per_class": per_class,
        "num_classes": int(c),
        "mean_angle_to_vertex_deg": None if ang_vertex is None else float(ang_vertex.mean()),
        "mean_direction_angle_deg": None if ang_dir is None else float(ang_dir.mean()),
        "mean_spread": float(spread.mean()) if c else None,
    }


# --------------------------------------------------------------------------- class geometry


def class_mean_directions(
    features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classes, (C, d) unit class-mean directions)`` of L2-normalised features."""
    x = F.normalize(features.detach().double().cpu(), dim=1)
    lab = labels.detach().flatten().long().cpu()
    classes, inv = torch.unique(lab, return_inverse=True)
    mean = torch.zeros(classes.numel(), x.shape[1], dtype=torch.float64).index_add_(0, inv, x)
    return classes, F.normalize(mean, dim=1)


def centre_drift_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean angle (degrees) between corresponding rows of two sets of class-mean directions.

    This is the non-stationarity a gallery sees: how far each class centre moved
    from one model to the next. It needs no vertex, so it applies to learnable heads too.
    """
    cos = (F.normalize(a.double(), dim=1) * F.normalize(b.double(), dim=1)).sum(dim=1)
    return float(torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).mean())


def centre_separation_deg(dirs: torch.Tensor) -> float | None:
    """Mean angle (degrees) between the class-mean directions of one model, over class pairs.

    A small spread means little when every class sits in the same place: this
    tells a tight, well-separated representation from a collapsed one.
    """
    c = dirs.shape[0]
    if c < 2:
        return None
    cos = (F.normalize(dirs.double(), dim=1) @ F.normalize(dirs.double(), dim=1).T).clamp(-1, 1)
    iu = torch.triu_indices(c, c, offset=1)
    return float(torch.rad2deg(torch.arccos(cos[iu[0], iu[1]])).mean())


# --------------------------------------------------------------------------- threads


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` torch CPU threads, then restore the previous number.

    The analysis works on tensors of a few hundred thousand elements, where
    intra-op threads cost more in start-up and, on a shared machine, in
    busy-waiting than they save. ``None`` leaves the setting alone.
    """
    if n is None:
        yield
        return
    if n < 1:
        raise InputError(f"threads must be >= 1, got {n}")
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
