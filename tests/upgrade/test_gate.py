"""The upgrade gate: numbers against obvious loops, the split by class name, contract refusals,
the decision rule and its display."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compatkit.errors import InputError
from compatkit.retrieval import mean_average_precision
from compatkit.upgrade.data import load_user_data
from compatkit.upgrade.embed import load_embedder
from compatkit.upgrade.gate import _decide, render, run_check
from compatkit.upgrade.train import TrainOptions, train_model

FAST = {"epochs": 2, "batch_size": 32, "device": "cpu"}


@pytest.fixture(scope="module")
def pair(tiny, tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("gate")
    train_model(str(tiny["v1"]), d / "old.pt", TrainOptions(**FAST, num_classes=8))
    train_model(str(tiny["v2new"]), d / "new.pt", TrainOptions(**FAST), old=d / "old.pt")
    return d / "old.pt", d / "new.pt"


def _slow_recall1(q: torch.Tensor, ql: list[int], g: torch.Tensor, gl: list[int]) -> float:
    hits = 0
    for i in range(len(q)):
        best, best_j = -2.0, -1
        for j in range(len(g)):
            s = float(q[i] @ g[j])
            if s > best:
                best, best_j = s, j
        hits += gl[best_j] == ql[i]
    return 100.0 * hits / len(q)


def _slow_template(q: torch.Tensor, ql: list[int], g: torch.Tensor, gl: list[int]) -> float:
    classes = sorted(set(gl))
    tmpl = [
        torch.nn.functional.normalize(g[[j for j in range(len(g)) if gl[j] == c]].mean(0), dim=0)
        for c in classes
    ]
    hits = sum(
        classes[max(range(len(classes)), key=lambda k: float(q[i] @ tmpl[k]))] == ql[i]
        for i in range(len(q))
    )
    return 100.0 * hits / len(q)


def test_matrix_against_obvious_loops_and_split_by_name(pair, tiny) -> None:
    old_p, new_p = pair
    v = run_check(str(old_p), str(new_p), str(tiny["query"]), str(tiny["gallery"]), device="cpu")
    json.dumps(v)  # JSON-able as it is
    assert v["format"] == "compatkit-check" and v["format_version"] == 1
    assert v["old"]["fingerprint"] == load_embedder(old_p).fingerprint
    assert v["new"]["path"] == str(new_p) and v["contract"]["ok"]
    g = v["groups"]
    assert g["old"]["classes"] == ["ant", "bee", "cat"]  # what OLD was trained on, by name
    assert g["unseen"]["classes"] == ["aardvark", "dog", "eel"]
    assert g["all"]["queries"] == 60 and g["old"]["queries"] == g["unseen"]["queries"] == 30

    query, gallery = load_user_data(str(tiny["query"])), load_user_data(str(tiny["gallery"]))
    old, new = load_embedder(old_p), load_embedder(new_p)
    qo, qn, go, gn = old.embed(query), new.embed(query), old.embed(gallery), new.embed(gallery)
    ql, gl = query.labels.tolist(), gallery.labels.tolist()  # same folders: same class order
    known = [i for i, y in enumerate(ql) if query.classes[y] in ("ant", "bee", "cat")]
    for group, rows in (("all", list(range(len(ql)))), ("old", known)):
        sub = [ql[i] for i in rows]
        m = g[group]["metrics"]
        assert m["recall@1"]["old_old"] == pytest.approx(_slow_recall1(qo[rows], sub, go, gl))
        assert m["recall@1"]["new_old"] == pytest.approx(_slow_recall1(qn[rows], sub, go, gl))
        assert m["recall@1"]["new_new"] == pytest.approx(_slow_recall1(qn[rows], sub, gn, gl))
        assert m["template"]["new_old"] == pytest.approx(_slow_template(qn[rows], sub, go, gl))
        for t in m.values():
            assert t["strict"] == (t["new_old"] > t["old_old"])
            assert t["new_new_gt_old_old"] == (t["new_new"] > t["old_old"])
    # "all" pools the two groups; it must equal the metric computed over every query at once.
    direct = mean_average_precision(qn, query.labels, go, gallery.labels)
    assert g["all"]["metrics"]["mAP"]["new_old"] == pytest.approx(direct)
    cos = torch.nn.functional.cosine_similarity(qo, qn, dim=1).mean()
    assert g["all"]["feature_cosine"] == pytest.approx(float(cos), abs=1e-5)
    d1 = g["all"]["definition1"]
    assert d1["same"]["of"] == sum(gl.count(y) for y in ql)
    assert d1["same"]["holds_in_expectation"] == (
        d1["same"]["expect_new"] <= d1["same"]["expect_old"]
    )
    by_class = {r["class"]: r for r in v["per_class"]}
    assert by_class["eel"]["known_to_old"] is False and by_class["dog"]["known_to_new"] is True
    decided = g["all"]["metrics"]["recall@1"]
    assert v["compatible"] == (decided["new_old"] > decided["old_old"])
    text = render(v)
    assert "classes OLD was trained on (30 queries, 3 classes)" in text
    assert f"{decided['old_old']:8.2f} {decided['new_old']:8.2f} {decided['new_new']:8.2f}" in text
    assert ("verdict: COMPATIBLE" in text) == v["compatible"]


def test_contract_mismatch_is_not_compatible_without_features(pair, tiny, tmp_path) -> None:
    other = tmp_path / "k6.pt"
    train_model(str(tiny["v1"]), other, TrainOptions(epochs=1, batch_size=32, num_classes=6))
    v = run_check(str(pair[0]), str(other), str(tmp_path / "nowhere"), str(tmp_path / "nowhere"))
    assert v["compatible"] is False and not v["contract"]["ok"]
    assert "feature dimensions differ (OLD 7, NEW 5)" in v["contract"]["reason"]
    assert "groups" not in v
    assert "NOT COMPATIBLE (the two models cannot share a gallery)" in render(v)


def _groups(oo: float, no: float, nn: float, unseen: tuple | None = None) -> dict:
    def grp(a, b, c):
        return {"metrics": {"recall@1": {"old_old": a, "new_old": b, "new_new": c}}}

    return {
        "all": grp(oo, no, nn),
        "old": grp(oo, no, nn),
        "unseen": grp(*unseen) if unseen else None,
    }


def test_decision_rule() -> None:
    assert _decide(_groups(70, 70.01, 60), "recall@1", "all", 0.0, False)[1] is True
    assert _decide(_groups(70, 70.0, 80), "recall@1", "all", 0.0, False)[1] is False  # strict
    assert _decide(_groups(70, 69.5, 80), "recall@1", "all", 0.6, False)[1] is True
    assert _decide(_groups(70, 69.5, 80), "recall@1", "all", 0.5, False)[1] is False
    assert _decide(_groups(70, 71, 69), "recall@1", "all", 0.0, True)[1] is False
    both = _groups(70, 71, 72, unseen=(50, 40, 60))
    assert _decide(both, "recall@1", "old", 0.0, False)[1] is True
    assert _decide(both, "recall@1", "each", 0.0, False)[1] is False
    d, _ = _decide(both, "recall@1", "each", 0.0, False)
    assert d["reasons"] == [
        "all: recall@1 new/old 71.00 > old/old 70.00",
        "old: recall@1 new/old 71.00 > old/old 70.00",
        "unseen: recall@1 new/old 40.00 <= old/old 50.00",
    ]
    with pytest.raises(InputError, match="--scope unseen: no query of classes OLD never saw"):
        _decide(_groups(1, 2, 3), "recall@1", "unseen", 0.0, False)


def test_bad_arguments(pair, tiny) -> None:
    args = (str(pair[0]), str(pair[1]), str(tiny["query"]), str(tiny["gallery"]))
    with pytest.raises(InputError, match="--metric must be one of"):
        run_check(*args, metric="recall@5")
    with pytest.raises(InputError, match="--tolerance must be"):
        run_check(*args, tolerance=float("nan"))
