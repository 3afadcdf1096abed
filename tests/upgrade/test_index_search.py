"""Search over the stored gallery against a brute-force float64 ranking, FAISS against torch,
mAP against a hand-computed case, and the compatibility gate with its record of checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compatkit.errors import DataError, IncompatibleModels, InputError
from compatkit.retrieval import mean_average_precision
from compatkit.upgrade import index as index_module
from compatkit.upgrade.index import (
    average_precision,
    gate_problems,
    load_checks,
    mean_ap,
    record_check,
    require_searchable,
    search_metrics,
)
from compatkit.upgrade.index_search import ranking_scores, search
from compatkit.upgrade.index_store import Gallery, IndexWriter

from .test_index_store import CONTRACT, make_index, unit_rows

A, B, C = "a" * 64, "b" * 64, "c" * 64


def brute_force(g: Gallery, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The obvious ranking: every score in float64, stable order (score desc, position asc)."""
    s = q.astype(np.float64) @ g.vectors().astype(np.float64).T
    pos = np.broadcast_to(np.arange(g.count), s.shape)
    order = np.lexsort((pos, -s), axis=1)[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


@pytest.fixture
def mixed(tmp_path: Path) -> Gallery:
    """60 items in shards of 16, with duplicates (exact ties) and 25 items backfilled."""
    x = unit_rows(60, 8, 0)
    x[[17, 33, 49]] = x[5]  # four identical vectors (one class) in four shards
    root = make_index(tmp_path / "idx", x, shard_rows=16, labels=[i % 4 for i in range(60)])
    y = unit_rows(60, 8, 1)
    with IndexWriter(root) as w:
        v = w.add_version(B, CONTRACT, "v2.pt")
        for part in (np.arange(0, 60, 5), np.arange(3, 60, 7)):
            part = np.setdiff1d(part, [5, 17, 33, 49])
            w.write_vectors(part, y[part], v)
    return Gallery.open(root)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_search_is_the_brute_force_ranking(mixed: Gallery, backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    q = np.concatenate([unit_rows(30, 8, 2), mixed.vectors([5, 9])])
    for k, block in ((1, 7), (6, 16), (60, 1000), (100, 9)):
        res = search(mixed, q, k=k, backend=backend, block_rows=block, query_chunk=11)
        want_p, want_s = brute_force(mixed, q, min(k, 60))
        np.testing.assert_array_equal(res.positions, want_p)
        np.testing.assert_allclose(res.scores, want_s, rtol=0, atol=1e-12)
    # The query equal to item 5 ties exactly with its three duplicates: lowest position first.
    top = search(mixed, q[-2:-1], k=4, backend=backend, block_rows=16).positions[0]
    assert top.tolist() == [5, 17, 33, 49]


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_a_tie_group_longer_than_the_candidate_list_keeps_the_lowest(tmp_path, backend) -> None:
    """40 copies of one vector in one block, 19 candidates asked (k 3 + margin 16): the
    three lowest positions come back, whichever copies a float32 kernel would cut."""
    if backend == "faiss":
        pytest.importorskip("faiss")
    x = unit_rows(400, 8, 7)
    copies = np.arange(9, 400, 10)
    x[copies] = x[4]
    g = Gallery.open(make_index(tmp_path / "idx", x, shard_rows=1000))
    q = np.repeat(x[4:5], 25, axis=0)  # 25 queries: faiss's BLAS path
    res = search(g, q, k=3, backend=backend)
    assert res.positions.tolist() == [[4, 9, 19]] * 25


def test_faiss_and_torch_give_identical_results(mixed: Gallery) -> None:
    pytest.importorskip("faiss")
    q = unit_rows(200, 8, 3)
    a = search(mixed, q, k=9, backend="torch", block_rows=13)
    b = search(mixed, q, k=9, backend="faiss", block_rows=13)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.scores, b.scores)  # bitwise: the same float64 rescoring
    assert (a.backend, b.backend) == ("torch", "faiss")


def test_ranking_scores_follow_item_order(mixed: Gallery) -> None:
    q = unit_rows(3, 8, 4)
    got = ranking_scores(mixed, q, block_rows=10).numpy()
    np.testing.assert_allclose(got, q @ mixed.vectors().T, atol=1e-6)


def test_average_precision_by_hand() -> None:
    # Ranking by score: items 2, 0 (tie with 3, lower position first), 3, 1.
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.5]])
    rel = torch.tensor([[False, True, True, True]])
    # Relevant at ranks 1, 3, 4: AP = (1/1 + 2/3 + 3/4) / 3.
    assert float(average_precision(scores, rel)[0]) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert torch.isnan(average_precision(scores, torch.zeros_like(rel))[0])


def test_metrics_match_the_in_memory_retrieval(mixed: Gallery) -> None:
    q = unit_rows(40, 8, 5)
    qy = np.arange(40) % 5  # class 4 is not in the gallery: unanswerable
    res = search(mixed, q, k=1, backend="torch")
    m = search_metrics(mixed, q, qy, res.positions)
    keep = qy < 4
    g = torch.from_numpy(mixed.vectors())
    want_map = mean_average_precision(
        torch.from_numpy(q[keep]).double(), qy[keep], g.double(), mixed.labels
    )
    assert m["mAP"] == pytest.approx(want_map, abs=1e-9)
    hits = mixed.labels[brute_force(mixed, q, 1)[0][:, 0]] == qy
    assert m["recall@1"] == pytest.approx(100 * hits[keep].mean())
    assert (m["queries"], m["unanswerable"]) == (40, 8)
    assert mean_ap(mixed, q, qy, budget=100) == pytest.approx(want_map, abs=1e-9)  # 1 query/step


def test_map_is_skipped_when_it_would_cost_too_much(mixed: Gallery, monkeypatch) -> None:
    q, qy = unit_rows(10, 8, 6), np.arange(10) % 4
    top = search(mixed, q, k=1).positions
    monkeypatch.setattr(index_module, "MAP_AUTO_LIMIT", 10 * 60 - 1)
    m = search_metrics(mixed, q, qy, top)
    assert "mAP" not in m and m["mAP_skipped"].startswith("10 queries x 60 items need")
    assert "mAP" in search_metrics(mixed, q, qy, top, with_map=True)
    assert "mAP" not in search_metrics(mixed, q, qy, top, with_map=False)
    monkeypatch.setattr(index_module, "MAP_AUTO_LIMIT", 10 * 60)
    assert "mAP" in search_metrics(mixed, q, qy, top)


# ----------------------------------------------------------------------------- the gate


def verdict(old: str, new: str, compatible: bool) -> dict:
    return {
        "format": "compatkit-check",
        "format_version": 1,
        "old": {"fingerprint": old, "path": "old.pt"},
        "new": {"fingerprint": new, "path": "new.pt"},
        "compatible": compatible,
        "matrix": [[80.0, None], [82.0, 85.0]],
    }


def test_gate_needs_a_recorded_compatible_check_for_every_version(mixed: Gallery) -> None:
    root = mixed.root
    assert mixed.counts_by_version() == {0: 43, 1: 17}  # versions A and B
    assert gate_problems(mixed, A, CONTRACT, []) == [
        f"no recorded check between version {B[:12]} (17 vectors) and the model "
        "(run `compatkit check OLD NEW ... --record INDEX`)"
    ]
    assert len(gate_problems(mixed, C, CONTRACT, [])) == 2  # a stranger: neither is covered
    record_check(root, verdict(A, B, True))
    assert gate_problems(mixed, A, CONTRACT, load_checks(root)) == []
    assert gate_problems(mixed, B, CONTRACT, load_checks(root)) == []
    record_check(root, verdict(A, C, True))
    assert len(gate_problems(mixed, C, CONTRACT, load_checks(root))) == 1  # B-C unchecked
    record_check(root, verdict(B, C, True))
    assert gate_problems(mixed, C, CONTRACT, load_checks(root)) == []
    record_check(root, verdict(C, B, False))  # the latest word on the pair B, C
    problems = gate_problems(mixed, C, CONTRACT, load_checks(root))
    assert problems == [
        f"the latest recorded check found version {B[:12]} (17 vectors) and the model incompatible"
    ]
    with pytest.raises(IncompatibleModels, match="pass --force to search anyway"):
        require_searchable(mixed, C, CONTRACT, 8)
    assert require_searchable(mixed, C, CONTRACT, 8, force=True) == problems
    with pytest.raises(IncompatibleModels, match="9-dimensional features but index"):
        require_searchable(mixed, C, CONTRACT, 9, force=True)  # --force cannot compare those
    assert len(load_checks(root)) == 4


def test_gate_refuses_another_contract_even_with_a_check(mixed: Gallery) -> None:
    other = {**CONTRACT, "num_classes": 9}
    record_check(mixed.root, verdict(A, C, True))
    record_check(mixed.root, verdict(B, C, True))
    problems = gate_problems(mixed, C, other, load_checks(mixed.root))
    assert len(problems) == 2 and all(
        "simplex heads with different K (6 vs 9)" in p for p in problems
    )


def test_record_check_validates_and_appends(mixed: Gallery, tmp_path: Path) -> None:
    for bad, msg in (
        ({**verdict(A, B, True), "format": "x"}, "format is 'x'"),
        ({**verdict(A, B, True), "compatible": "yes"}, "'compatible' must be true or false"),
        ({**verdict(A, B, True), "old": {}}, "'old' must be an object with a 'fingerprint'"),
        ({**verdict(A, B, True), "score": float("nan")}, "not plain JSON"),
        ([1], "must be a JSON object"),
    ):
        with pytest.raises(InputError, match=msg):
            record_check(mixed.root, bad)
    with pytest.raises(DataError, match="no such directory"):
        record_check(tmp_path / "not-an-index", verdict(A, B, True))
    record_check(mixed.root, verdict(A, B, True))
    entry = record_check(mixed.root, verdict(A, B, False))
    doc = json.loads((mixed.root / "checks.json").read_text())
    assert [e["verdict"]["compatible"] for e in doc["checks"]] == [True, False]
    assert doc["checks"][-1] == entry and entry["verdict"]["matrix"][1] == [82.0, 85.0]


def test_hand_edited_records_and_missing_faiss_are_user_errors(mixed: Gallery, monkeypatch) -> None:
    from compatkit.upgrade import index_search

    (mixed.root / "checks.json").write_text('{"checks": [{"verdict": {"format": "x"}}]}')
    with pytest.raises(DataError, match=r"checks\.json: entry 0 is malformed"):
        load_checks(mixed.root)
    (mixed.root / "backfill.json").write_text('{"order": "all"}')
    from compatkit.upgrade.index import read_plan

    with pytest.raises(DataError, match=r"backfill\.json: malformed"):
        read_plan(mixed.root / "backfill.json")
    monkeypatch.setattr(index_search, "faiss_available", lambda: False)
    with pytest.raises(InputError, match="faiss is not installed"):
        search(mixed, unit_rows(1, 8, 0), backend="faiss")
    assert search(mixed, unit_rows(1, 8, 0)).backend == "torch"  # auto falls back
