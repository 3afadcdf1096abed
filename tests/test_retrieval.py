"""Tests for compatkit.retrieval: hand-built cases and slow, obvious per-query loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compatkit.retrieval import (
    class_templates,
    cross_model_matrix,
    mean_average_precision,
    recall_at_k,
    template_accuracy,
)
from compatkit.retrieval import neighbours as retrieval

# ----------------------------------------------------------------------------- slow references


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _scores(q: torch.Tensor, g: torch.Tensor) -> list[list[float]]:
    qn, gn = _unit(q.double().numpy()), _unit(g.double().numpy())
    return [[float(np.dot(a, b)) for b in gn] for a in qn]


def _stable_ranking(row: list[float]) -> list[int]:
    # Python's sort is stable: equal scores keep gallery order.
    return sorted(range(len(row)), key=lambda j: -row[j])


def slow_template_accuracy(q, ql, g, gl) -> float:
    gn = _unit(g.double().numpy())
    gl, ql = gl.tolist(), ql.tolist()
    classes = sorted(set(gl))
    templates = []
    for c in classes:
        m = np.mean([gn[i] for i in range(len(gl)) if gl[i] == c], axis=0)
        templates.append(m / np.linalg.norm(m))
    qn = _unit(q.double().numpy())
    right = counted = 0
    for x, y in zip(qn, ql, strict=True):
        if y not in classes:
            continue
        counted += 1
        sims = [float(np.dot(x, t)) for t in templates]
        right += classes[int(np.argmax(sims))] == y
    return 100.0 * right / counted


def slow_recall(scores, ql, gl, k) -> float:
    hit = counted = 0
    for row, y in zip(scores, ql.tolist(), strict=True):
        if y not in gl.tolist():
            continue
        counted += 1
        hit += any(gl[j] == y for j in _stable_ranking(row)[:k])
    return 100.0 * hit / counted


def slow_map(scores, ql, gl) -> float:
    aps = []
    for row, y in zip(scores, ql.tolist(), strict=True):
        rel = [int(gl[j] == y) for j in _stable_ranking(row)]
        if not any(rel):
            continue
        found, ap = 0, 0.0
        for rank, r in enumerate(rel, start=1):
            if r:
                found += 1
                ap += found / rank
        aps.append(ap / sum(rel))
    return 100.0 * sum(aps) / len(aps)


def _random_set(seed: int, nq: int = 40, ng: int = 60, d: int = 8, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g, dtype=torch.float64)
    ql = torch.randint(0, classes, (nq,), generator=g)
    gl = torch.randint(0, classes, (ng,), generator=g)
    q = centres[ql] + 1.2 * torch.randn(nq, d, generator=g, dtype=torch.float64)
    gal = centres[gl] + 1.2 * torch.randn(ng, d, generator=g, dtype=torch.float64)
    return q, ql, gal, gl


def _tie_set(seed: int):
    """Gallery and queries drawn from 6 distinct vectors: many exactly tied scores."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [2, 0, 0]], dtype=torch.float64
    )
    gi = torch.randint(0, len(pool), (30,), generator=g)
    qi = torch.randint(0, len(pool), (25,), generator=g)
    return pool[qi], torch.randint(0, 3, (25,), generator=g), pool[gi], torch.randint(0, 3, (30,))


# ----------------------------------------------------------------------------- hand-built


def test_template_accuracy_by_hand() -> None:
    # Templates: class 0 -> (1, 0), class 1 -> (0, 1), class 2 -> (-1, 0).
    gallery = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    gl = torch.tensor([0, 0, 1, 2])
    queries = torch.tensor([[0.9, 0.1], [0.1, 0.9], [-1.0, 0.2], [0.6, 0.5]])
    ql = torch.tensor([0, 1, 2, 1])
    # The last query is closer to (1, 0) (cosine 0.77) than to (0, 1) (0.64): 3 of 4 right.
    assert template_accuracy(queries, ql, gallery, gl) == pytest.approx(75.0)


def test_templates_average_normalised_features() -> None:
    # Normalising before the mean: (10, 0) and (0, 1) give a 45-degree template, not ~(1, 0.05).
    t, ids = class_templates(torch.tensor([[10.0, 0.0], [0.0, 1.0], [0.0, -4.0]]), [7, 7, 3])
    assert ids.tolist() == [3, 7]
    torch.testing.assert_close(t[1], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    torch.testing.assert_close(t[0], torch.tensor([0.0, -1.0]))
    torch.testing.assert_close(t.norm(dim=1), torch.ones(2))


def test_tie_rule_is_stable_gallery_order() -> None:
    # Two identical gallery vectors; the wrong-class one comes first, so it ranks first.
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    gl = torch.tensor([1, 0, 0])
    q, ql = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    r = recall_at_k(q, ql, gallery, gl, ks=(1, 2))
    assert r == {1: 0.0, 2: 100.0}
    # Ranking [1, 0, 0] relevance [0, 1, 1]: AP = (1/2 + 2/3) / 2 = 7/12.
    assert mean_average_precision(q, ql, gallery, gl) == pytest.approx(100 * 7 / 12)


def test_recall_and_map_by_hand() -> None:
    # Cosines of the query (1, 0): g0 0.0, g1 1.0, g2 0.6, g3 -1.0 -> ranking g1, g2, g0, g3.
    gallery = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    gl = torch.tensor([5, 6, 5, 5])
    q, ql = torch.tensor([[1.0, 0.0]]), torch.tensor([5])
    assert recall_at_k(q, ql, gallery, gl, ks=(1, 2, 4)) == {1: 0.0, 2: 100.0, 4: 100.0}
    # Relevance by rank [0, 1, 1, 1]: AP = (1/2 + 2/3 + 3/4) / 3.
    expect = 100 * (1 / 2 + 2 / 3 + 3 / 4) / 3
    assert mean_average_precision(q, ql, gallery, gl) == pytest.approx(expect)


# ----------------------------------------------------------------------------- vs slow loops


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_template_accuracy_matches_slow_loop(seed: int) -> None:
    q, ql, g, gl = _random_set(seed)
    fast = template_accuracy(q, ql, g, gl, chunk=7)
    assert fast == pytest.approx(slow_template_accuracy(q, ql, g, gl))
    assert 0.0 < fast < 100.0  # a non-trivial case


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_and_map_match_slow_loop_random(seed: int) -> None:
    q, ql, g, gl = _random_set(seed)
    s = _scores(q, g)
    fast = recall_at_k(q, ql, g, gl, ks=(1, 3, 10), chunk=9)
    for k in (1, 3, 10):
        assert fast[k] == pytest.approx(slow_recall(s, ql, gl, k))
    assert mean_average_precision(q, ql, g, gl, chunk=9) == pytest.approx(slow_map(s, ql, gl))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_recall_and_map_match_slow_loop_with_ties(seed: int) -> None:
    q, ql, g, gl = _tie_set(seed)
    s = _scores(q, g)
    fast = recall_at_k(q, ql, g, gl, ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert fast[k] == pytest.approx(slow_recall(s, ql, gl, k)), k
    assert mean_average_precision(q, ql, g, gl, chunk=4) == pytest.approx(slow_map(s, ql, gl))
    assert template_accuracy(q, ql, g, gl) == pytest.approx(slow_template_accuracy(q, ql, g, gl))


def test_chunk_size_does_not_change_results() -> None:
    q, ql, g, gl = _random_set(5, nq=101)
    for chunk in (1, 13, 1000):
        assert recall_at_k(q, ql, g, gl, ks=(1, 5), chunk=chunk) == recall_at_k(q, ql, g, gl)
        assert mean_average_precision(q, ql, g, gl, chunk=chunk) == pytest.approx(
            mean_average_precision(q, ql, g, gl)
        )


def test_float32_and_half_inputs() -> None:
    q, ql, g, gl = _random_set(3)
    ref = template_accuracy(q, ql, g, gl)
    assert template_accuracy(q.float(), ql, g.float(), gl) == pytest.approx(ref)
    # float16 is upcast; on this well-separated data rounding moves at most a query or two.
    assert abs(template_accuracy(q.half(), ql, g.half(), gl) - ref) <= 5.0


def test_queries_of_absent_classes_are_left_out() -> None:
    q, ql, g, gl = _random_set(4)
    extra_q = torch.randn(5, q.shape[1], dtype=torch.float64)
    q2, ql2 = torch.cat([q, extra_q]), torch.cat([ql, torch.full((5,), 99)])
    assert template_accuracy(q2, ql2, g, gl) == pytest.approx(template_accuracy(q, ql, g, gl))
    assert recall_at_k(q2, ql2, g, gl) == recall_at_k(q, ql, g, gl)
    assert mean_average_precision(q2, ql2, g, gl) == pytest.approx(
        mean_average_precision(q, ql, g, gl)
    )
    with pytest.raises(ValueError, match="no query"):
        recall_at_k(extra_q, torch.full((5,), 99), g, gl)


def test_input_validation() -> None:
    q, ql, g, gl = _random_set(0)
    with pytest.raises(ValueError, match="dimension"):
        template_accuracy(q[:, :4], ql, g, gl)
    with pytest.raises(ValueError, match="labels"):
        recall_at_k(q, ql[:-1], g, gl)
    with pytest.raises(ValueError, match="integer"):
        mean_average_precision(q, ql.double(), g, gl)
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(q, ql, g, gl, ks=(0,))


# ----------------------------------------------------------------------------- the matrix


def _models(t: int = 3, d: int = 6):
    q, ql, g, gl = _random_set(11, d=d)
    gen = torch.Generator().manual_seed(1)
    # Model i sees the data through a slightly different random map, so entries differ.
    maps = [torch.eye(d, dtype=torch.float64)] + [
        torch.eye(d, dtype=torch.float64)
        + 0.4 * torch.randn(d, d, generator=gen, dtype=torch.float64)
        for _ in range(t - 1)
    ]
    return [q @ m for m in maps], [g @ m for m in maps], ql, gl


@pytest.mark.parametrize("metric", ["template", "recall@1", "recall@3", "mAP"])
def test_cross_model_matrix_entries(metric: str) -> None:
    qs, gs, ql, gl = _models()
    c = cross_model_matrix(qs, gs, ql, gl, metric=metric)
    assert c.shape == (3, 3) and c.dtype == np.float64
    assert np.isnan(c[np.triu_indices(3, k=1)]).all()
    assert np.isfinite(c[np.tril_indices(3)]).all()
    for i in range(3):
        for j in range(i + 1):
            if metric == "template":
                want = template_accuracy(qs[i], ql, gs[j], gl)
            elif metric == "mAP":
                want = mean_average_precision(qs[i], ql, gs[j], gl)
            else:
                k = int(metric.split("@")[1])
                want = recall_at_k(qs[i], ql, gs[j], gl, ks=(k,))[k]
            assert c[i, j] == pytest.approx(want), (i, j)


def test_cross_model_matrix_refuses_mismatched_dimensions() -> None:
    qs, gs, ql, gl = _models()
    qs[2] = torch.cat([qs[2], torch.zeros(qs[2].shape[0], 1, dtype=qs[2].dtype)], dim=1)
    with pytest.raises(ValueError, match=r"model 2 .*dimension 7.* model 0 .*dimension 6"):
        cross_model_matrix(qs, gs, ql, gl)


def test_cross_model_matrix_bad_arguments() -> None:
    qs, gs, ql, gl = _models()
    with pytest.raises(ValueError, match="unknown metric"):
        cross_model_matrix(qs, gs, ql, gl, metric="top5")
    with pytest.raises(ValueError, match="same number"):
        cross_model_matrix(qs, gs[:2], ql, gl)
    with pytest.raises(ValueError, match="model 1 has"):
        cross_model_matrix([qs[0], qs[1][:-1], qs[2]], gs, ql, gl)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_results_on_cuda() -> None:
    qs, gs, ql, gl = _models()
    cpu = cross_model_matrix(qs, gs, ql, gl, metric="mAP")
    gpu = cross_model_matrix([q.cuda() for q in qs], [g.cuda() for g in gs], ql, gl, metric="mAP")
    np.testing.assert_allclose(cpu, gpu, equal_nan=True)


# ----------------------------------------------------------------------------- faiss backend

needs_faiss = pytest.mark.skipif(not retrieval.faiss_available(), reason="needs faiss")


def _float32_set(seed: int, nq: int = 70, ng: int = 90, d: int = 8, classes: int = 6):
    """Random float32 features: continuous values, so no two scores are equal."""
    q, ql, g, gl = _random_set(seed, nq, ng, d, classes)
    return q.float(), ql, g.float(), gl


def _exact_tie_set(seed: int):
    """float32 features from axis-aligned vectors: every cosine is exactly -1, 0 or 1 in any
    precision, so there are many exact ties and the tie rule alone decides the ranking."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [0, 3, 0], [-1, 0, 0]], dtype=torch.float32
    )
    gi = torch.randint(0, len(pool), (40,), generator=g)
    qi = torch.randint(0, len(pool), (30,), generator=g)
    gl = torch.randint(0, 3, (40,), generator=g)
    return pool[qi], torch.randint(0, 3, (30,), generator=g), pool[gi], gl


def test_backend_argument_is_checked(monkeypatch) -> None:
    q, ql, g, gl = _float32_set(0)
    with pytest.raises(ValueError, match="unknown backend"):
        recall_at_k(q, ql, g, gl, backend="annoy")
    with pytest.raises(ValueError, match="unknown backend"):
        cross_model_matrix([q], [g], ql, gl, backend="")
    monkeypatch.setattr(retrieval, "_faiss", lambda: None)  # as if faiss were not installed
    assert not retrieval.faiss_available()
    with pytest.raises(ImportError, match=r"compatkit\[faiss\]"):
        recall_at_k(q, ql, g, gl, backend="faiss")
    # auto falls back to torch silently
    assert recall_at_k(q, ql, g, gl, backend="auto") == recall_at_k(q, ql, g, gl, backend="torch")


def test_auto_backend_choice(monkeypatch) -> None:
    monkeypatch.setattr(retrieval, "faiss_available", lambda: True)
    cpu = torch.device("cpu")
    assert retrieval.resolve_backend("auto", cpu, torch.float32, True) == "faiss"
    # float64 stays on torch (exact)
    assert retrieval.resolve_backend("AUTO", cpu, torch.float64, True) == "torch"
    assert retrieval.resolve_backend("auto", cpu, torch.float32, False) == "torch"  # templates, mAP
    assert retrieval.resolve_backend("auto", torch.device("cuda"), torch.float32, True) == "torch"
    assert retrieval.resolve_backend("faiss", cpu, torch.float64, False) == "faiss"  # asked for
    assert retrieval.resolve_backend("torch", cpu, torch.float32, True) == "torch"
    monkeypatch.setattr(retrieval, "faiss_available", lambda: False)
    assert retrieval.resolve_backend("auto", cpu, torch.float32, True) == "torch"


@needs_faiss
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faiss_equals_torch_on_random_features(seed: int) -> None:
    q, ql, g, gl = _float32_set(seed)
    ks = (1, 3, 10, 500)  # 500 > gallery size: every query with a positive counts
    want = recall_at_k(q, ql, g, gl, ks=ks, backend="torch")
    assert recall_at_k(q, ql, g, gl, ks=ks, backend="faiss", chunk=16) == want
    assert want[500] == 100.0 and 0.0 < want[1] < 100.0
    assert template_accuracy(q, ql, g, gl, backend="faiss") == template_accuracy(
        q, ql, g, gl, backend="torch"
    )
    assert mean_average_precision(q, ql, g, gl, backend="faiss", chunk=16) == pytest.approx(
        mean_average_precision(q, ql, g, gl, backend="torch")
    )
    # and both against the slow loop
    s = _scores(q, g)
    assert want[3] == pytest.approx(slow_recall(s, ql, gl, 3))


@needs_faiss
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_faiss_keeps_the_stable_tie_rule(seed: int) -> None:
    q, ql, g, gl = _exact_tie_set(seed)
    s = _scores(q, g)
    got = recall_at_k(q, ql, g, gl, ks=(1, 2, 5, 12), backend="faiss")
    for k in (1, 2, 5, 12):
        assert got[k] == pytest.approx(slow_recall(s, ql, gl, k)), k
    assert mean_average_precision(q, ql, g, gl, backend="faiss") == pytest.approx(
        slow_map(s, ql, gl)
    )
    # Templates are means: two classes' templates may tie in float64 (the slow loop) and
    # differ by one ulp in float32, so the faiss path is held to the torch path here.
    assert template_accuracy(q, ql, g, gl, backend="faiss") == template_accuracy(
        q, ql, g, gl, backend="torch"
    )


@needs_faiss
def test_faiss_settles_long_tie_groups_by_index() -> None:
    """A group of equal scores longer than faiss's list is ranked exactly (lowest index first)."""
    g = torch.zeros(60, 4)
    g[:, 0] = 1.0  # 60 identical rows: every score ties
    g[7, 1] = 1e-3  # ... but one, which is nearer to a query along axis 1
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    near = retrieval.faiss_neighbours(retrieval.flat_index(F.normalize(g)), F.normalize(q), 5)
    assert near[0].tolist() == [0, 1, 2, 3, 4]
    assert near[1].tolist() == [7, 0, 1, 2, 3]


@needs_faiss
def test_faiss_leaves_out_queries_of_absent_classes() -> None:
    q, ql, g, gl = _float32_set(4)
    q2 = torch.cat([q, torch.randn(5, q.shape[1])])
    ql2 = torch.cat([ql, torch.full((5,), 99)])
    assert recall_at_k(q2, ql2, g, gl, backend="faiss") == recall_at_k(
        q, ql, g, gl, backend="torch"
    )


@needs_faiss
@pytest.mark.parametrize("metric", ["template", "recall@1", "recall@4", "mAP"])
def test_cross_model_matrix_faiss_equals_torch(metric: str) -> None:
    qs, gs, ql, gl = _models(t=4)
    qs, gs = [x.float() for x in qs], [x.float() for x in gs]
    want = cross_model_matrix(qs, gs, ql, gl, metric=metric, backend="torch")
    got = cross_model_matrix(qs, gs, ql, gl, metric=metric, backend="faiss", chunk=8)
    # Same rankings; mAP sums float32 precisions in chunks of another size, hence the atol.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, equal_nan=True)
    if metric != "mAP":
        np.testing.assert_array_equal(got, want)
    if metric.startswith("recall"):  # auto picks faiss here: still the same matrix
        np.testing.assert_array_equal(cross_model_matrix(qs, gs, ql, gl, metric=metric), want)


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_top_k_against_a_loop_with_ties(backend) -> None:
    """Each query's k best by (score descending, index ascending), as a slow loop ranks them;
    the features are built with many exact ties (repeated gallery rows)."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 8, generator=g)
    gallery = base[torch.randint(0, 6, (40,), generator=g)]  # every row repeats
    queries = torch.randn(9, 8, generator=g)
    scores, idx = retrieval.top_k(queries, gallery, 7, backend=backend, chunk=4)
    qn, gn = F.normalize(queries), F.normalize(gallery)
    for i in range(len(queries)):
        sims = [float(qn[i] @ gn[j]) for j in range(len(gallery))]
        want = sorted(range(len(gallery)), key=lambda j: (-round(sims[j], 5), j))[:7]
        assert idx[i].tolist() == want
        assert scores[i].tolist() == pytest.approx([sims[j] for j in want], abs=1e-5)
    _, all_idx = retrieval.top_k(queries, gallery, 100)  # k beyond the gallery: every row
    assert all_idx.shape == (9, 40)
    with pytest.raises(ValueError, match="k must be >= 1"):
        retrieval.top_k(queries, gallery, 0)


@pytest.mark.parametrize("seed", range(4))
def test_stable_topk_against_a_sort_with_many_ties(seed: int) -> None:
    """Scores drawn from 4 values, so most cuts fall inside a tie group: every k from 1 to n
    gives the first k of a stable sort (score descending, index ascending)."""
    from compatkit.retrieval.neighbours import stable_topk

    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (7, 13), generator=g).float()
    for k in range(1, 14):
        want = [sorted(range(13), key=lambda j, r=r: (-float(r[j]), j))[:k] for r in scores]
        assert stable_topk(scores, k).tolist() == want, k
    assert stable_topk(scores, 0).shape == (7, 0)
