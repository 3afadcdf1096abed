"""The compatibility layer kept with the gallery: the gate and its recorded checks, and every
damaged or hostile record (hand-edited with the engine's own library) refused in one line
before anything is read from it or written because of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compatkit.errors import DataError, IncompatibleModels, InputError
from compatkit.retrieval import mean_average_precision
from compatkit.upgrade.index import (
    Gallery,
    gate_problems,
    load_checks,
    record_check,
    require_searchable,
)
from compatkit.upgrade.ledger import read_plan
from compatkit.upgrade.search import search_metrics
from compatkit.upgrade.store import Rows, open_store

from .index_helpers import CONTRACT, ENGINES, A, B, C, gallery_uri, make_gallery, unit_rows

pytest.importorskip("lancedb")
pytest.importorskip("milvus_lite")


def verdict(old: str, new: str, compatible: bool) -> dict:
    return {
        "format": "compatkit-check",
        "format_version": 1,
        "old": {"fingerprint": old, "path": "old.pt"},
        "new": {"fingerprint": new, "path": "new.pt"},
        "compatible": compatible,
        "matrix": [[80.0, None], [82.0, 85.0]],
    }


def mixed(uri: str) -> str:
    """60 items of version A, 17 of them re-embedded by version B."""
    make_gallery(uri, unit_rows(60, 8, 0))
    s = open_store(uri)
    try:
        p = [*np.arange(0, 60, 7)[:9].tolist(), 3, 10, 17, 24, 31, 38, 45, 52]
        p = np.array(sorted(set(p)))[:17]
        g = s.fetch(p, ("item_id", "label", "class_name"))
        s.upsert(Rows(p, unit_rows(p.size, 8, 1), g.ids, g.labels, g.classes, [B] * p.size))
        ver = {
            "fingerprint": B,
            "contract": CONTRACT,
            "model": "v2.pt",
            "added": "2026-02-01",
            "class_names": {},
        }
        s.put_records({f"version/{B}": ver})
    finally:
        s.close()
    return uri


@pytest.fixture(params=ENGINES)
def uri(request, tmp_path: Path) -> str:
    return mixed(gallery_uri(tmp_path, request.param))


def test_gate_needs_a_recorded_compatible_check_for_every_version(uri: str) -> None:
    with Gallery.open(uri) as g:
        assert g.counts == {A: 43, B: 17}
        assert gate_problems(g, A, CONTRACT, []) == [
            f"no recorded check between version {B[:12]} (17 vectors) and the model "
            "(run `compatkit check OLD NEW ... --record INDEX`)"
        ]
        assert len(gate_problems(g, C, CONTRACT, [])) == 2  # a stranger: neither is covered
    record_check(uri, verdict(A, B, True))
    with Gallery.open(uri) as g:
        assert gate_problems(g, A, CONTRACT, load_checks(g)) == []
        assert gate_problems(g, B, CONTRACT, load_checks(g)) == []
    record_check(uri, verdict(A, C, True))
    record_check(uri, verdict(B, C, True))
    with Gallery.open(uri) as g:
        assert gate_problems(g, C, CONTRACT, load_checks(g)) == []
    record_check(uri, verdict(C, B, False))  # the latest word on the pair B, C
    with Gallery.open(uri) as g:
        problems = gate_problems(g, C, CONTRACT, load_checks(g))
        assert problems == [
            f"the latest recorded check found version {B[:12]} (17 vectors) and the model "
            "incompatible"
        ]
        with pytest.raises(IncompatibleModels, match="pass --force to search anyway"):
            require_searchable(g, C, CONTRACT, 8)
        assert require_searchable(g, C, CONTRACT, 8, force=True) == problems
        with pytest.raises(IncompatibleModels, match="9-dimensional features but index"):
            require_searchable(g, C, CONTRACT, 9, force=True)  # --force cannot compare those
        other = {**CONTRACT, "num_classes": 5}
        assert all("different K (9 vs 5)" in p for p in gate_problems(g, C, other, []))
        assert len(load_checks(g)) == 4


def test_record_check_validates(tmp_path: Path) -> None:
    uri = mixed(gallery_uri(tmp_path, "lancedb"))
    for bad, msg in (
        ({**verdict(A, B, True), "format": "x"}, "format is 'x'"),
        ({**verdict(A, B, True), "compatible": "yes"}, "'compatible' must be true or false"),
        ({**verdict(A, B, True), "old": {"fingerprint": "z"}}, "'old' must be an object"),
        ({**verdict(A, B, True), "score": float("nan")}, "not plain JSON"),
        ([1], "must be a JSON object"),
    ):
        with pytest.raises(InputError, match=msg):
            record_check(uri, bad)
    with pytest.raises(DataError, match="no such LanceDB database"):
        record_check(tmp_path / "not-an-index", verdict(A, B, True))
    with Gallery.open(uri) as g:
        assert load_checks(g) == []


def _edit(uri: str, records: dict) -> None:
    """Write records as a hand-editor with the engine's own library would."""
    s = open_store(uri)
    try:
        s.put_records(records)
    finally:
        s.close()


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"gallery": None}, "no 'gallery' record: an interrupted"),
        ({"gallery": {"format": "compatkit-gallery", "format_version": 9}}, "newer than this"),
        ({"gallery": "x"}, "record 'gallery' is not a 'compatkit-gallery' record"),
        ({f"version/{B}": {"fingerprint": C}}, "does not name its own fingerprint"),
        ({f"version/{B}": None}, "17 vectors carry a model version the gallery does not record"),
        (
            {f"version/{B}": {"fingerprint": B, "contract": {"feat_dim": 5}, "model": "m"}},
            "malformed contract",
        ),
        (
            {"check/0": {"recorded": "now", "verdict": {"format": "x"}}},
            "record 'check/0' is malformed",
        ),
    ],
)
def test_damaged_records_are_refused_in_one_line(tmp_path: Path, edit, message) -> None:
    uri = mixed(gallery_uri(tmp_path, "lancedb"))
    _edit(uri, edit)
    with pytest.raises(DataError, match=message):
        with Gallery.open(uri) as g:
            load_checks(g)


def test_count_edits_and_contract_garbage(tmp_path: Path) -> None:
    uri = mixed(gallery_uri(tmp_path, "lancedb"))
    s = open_store(uri)
    doc = s.get_record("gallery")
    s.close()
    for count in (61, 10**30, -1, True):
        _edit(uri, {"gallery": {**doc, "count": count}})
        with pytest.raises(DataError, match=r"holds 60 vectors but|invalid item count"):
            Gallery.open(uri)
    _edit(uri, {"gallery": doc})
    bad = {
        "fingerprint": B,
        "model": "m",
        "added": "x",
        "class_names": {},
        "contract": {**CONTRACT, "class_map": {"local": {"0": "zero"}}},
    }
    _edit(uri, {f"version/{B}": bad})
    with Gallery.open(uri) as g:
        with pytest.raises(DataError, match=r"contract of version .* malformed"):
            gate_problems(g, C, {**CONTRACT, "class_map": {"local": {"0": 1}}}, [])
    _edit(uri, {"check/1": {"recorded": "x", "verdict": {"format": "x"}}})
    with pytest.raises(DataError, match="record 'check/1' is malformed"):
        record_check(uri, verdict(A, B, True))  # nothing appended to a damaged record
    s = open_store(uri)
    assert s.record_keys("check/") == ["check/1"]
    s.close()


def plan(**over) -> dict:
    base = {
        "format": "compatkit-backfill-plan",
        "new": B,
        "policy": "random",
        "fraction": 0.5,
        "seed": 0,
        "chunk": 4,
        "had": 17,
        "model": "v2.pt",
        "decided": {},
        "order": list(range(0, 13)),
    }
    return {**base, **over}


@pytest.mark.parametrize(
    "over, message",
    [
        ({"order": [-1, *range(1, 13)]}, "not a list of item positions below 60"),
        ({"order": [10**30, *range(1, 13)]}, "not a list of item positions below 60"),
        ({"order": [0] * 13}, "lists an item more than once"),
        ({"order": list(range(43))}, "plans 43 items after 17 done, but fraction 0.5 of 60"),
        ({"fraction": 2}, "invalid fraction"),
        ({"seed": True}, "invalid seed"),
        ({"chunk": 0}, "invalid chunk"),
        ({"policy": "fifo"}, "unknown policy"),
        ({"new": C}, "model version the gallery does not record"),
        ({"order": "all"}, "not a list of item positions"),
    ],
)
def test_hostile_plans_are_refused(tmp_path: Path, over, message) -> None:
    uri = mixed(gallery_uri(tmp_path, "lancedb"))
    _edit(uri, {"plan": plan()})
    with Gallery.open(uri) as g:
        assert read_plan(g.store, g.doc, g.versions)["order"] == list(range(13))
    _edit(uri, {"plan": plan(**over)})
    with Gallery.open(uri) as g, pytest.raises(DataError, match=message):
        read_plan(g.store, g.doc, g.versions)


def test_metrics_match_the_in_memory_retrieval(tmp_path: Path) -> None:
    uri = mixed(gallery_uri(tmp_path, "lancedb"))
    q = unit_rows(40, 8, 5)
    qy = np.where(np.arange(40) % 4 == 3, -1, np.arange(40) % 4)  # class 3: not in the gallery
    with Gallery.open(uri) as g:
        hits = g.store.search(q, 1)
        m = search_metrics(g, q, qy, hits)
        x = g.vectors(np.arange(60))
        labels = g.column("label")
    keep = qy >= 0
    want = mean_average_precision(torch.from_numpy(q[keep]), qy[keep], torch.from_numpy(x), labels)
    assert m["mAP"] == pytest.approx(want, abs=1e-6)
    top = np.argmax(q.astype(np.float64) @ x.astype(np.float64).T, axis=1)
    assert m["recall@1"] == pytest.approx(100 * (labels[top] == qy)[keep].mean())
    assert (m["queries"], m["unanswerable"]) == (40, 10)
