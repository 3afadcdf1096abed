"""Backfill policies against slow obvious loops, and the backfill itself on real checkpoints
and both engines: a target fraction, no-op re-runs, a pending plan that only its own command
may finish, and source data that must still be the gallery's (refused before any write)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from compatkit.errors import DataError, IncompatibleModels, InputError
from compatkit.upgrade.backfill import MAX_WORKERS, backfill, parse_worker
from compatkit.upgrade.build import build_index
from compatkit.upgrade.data import load_user_data
from compatkit.upgrade.embed import load_embedder
from compatkit.upgrade.index import Gallery
from compatkit.upgrade.policies import VectorSource, class_drift, margins, priority

from .index_helpers import ENGINES, gallery_uri, trained_models, unit_rows, wide_model


@pytest.fixture(scope="session")
def models(tmp_path_factory, tiny) -> dict[str, Path]:
    return trained_models(tmp_path_factory, tiny)


# ----------------------------------------------------------------------------- policies


def test_margins_by_a_slow_loop() -> None:
    x = unit_rows(30, 6, 0)
    labels = np.array([i % 3 for i in range(30)])
    got = margins(VectorSource.of_array(x, rows=7), labels)
    x = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    tmpl = [x[labels == c].mean(axis=0) for c in range(3)]
    tmpl = [t / np.linalg.norm(t) for t in tmpl]
    for i in range(30):
        cos = [float(x[i] @ t) for t in tmpl]
        own = cos[labels[i]]
        other = max(c for j, c in enumerate(cos) if j != labels[i])
        assert got[i] == pytest.approx(own - other, abs=1e-12)


def test_uncertainty_puts_the_least_confident_first() -> None:
    x = unit_rows(40, 6, 1)
    labels = np.array([i % 4 for i in range(40)])
    eligible = np.arange(3, 40, 2)
    order, why = priority("uncertainty", eligible, 0, 40, labels, stored=VectorSource.of_array(x))
    m = margins(VectorSource.of_array(x), labels)
    assert sorted(order.tolist()) == eligible.tolist()
    assert np.all(np.diff(m[order]) >= 0)
    assert why["margin_quantiles"]["min"] == pytest.approx(m[eligible].min())


def test_class_policy_takes_whole_classes_that_moved_most_first() -> None:
    old = unit_rows(60, 6, 2)
    labels = np.array([i % 3 for i in range(60)])
    new = old.copy()
    new[labels == 2] = unit_rows(20, 6, 3)  # class 2 moves far
    new[labels == 0] = old[labels == 0] + 0.05 * unit_rows(20, 6, 4)  # class 0 a little
    eligible = np.arange(60)
    stored = VectorSource.of_array(old)
    order, why = priority("class", eligible, 7, 60, labels, stored=stored, new=lambda p: new[p])
    assert why["class_order"] == [2, 0, 1]  # class 1 did not move at all
    assert [set(labels[order[a : a + 20]].tolist()) for a in (0, 20, 40)] == [{2}, {0}, {1}]
    drift = class_drift(stored, lambda p: new[p], labels, eligible, 7, sample=5)
    for c in range(3):  # 5 sampled items per class: their mean 1 - cos lies in the class's range
        full = 1 - np.sum(old[labels == c] * new[labels == c], axis=1)
        assert full.min() - 1e-9 <= drift[c] <= full.max() + 1e-9
    assert drift[1] == pytest.approx(0.0, abs=1e-6)
    again, _ = priority("class", eligible, 7, 60, labels, stored=stored, new=lambda p: new[p])
    np.testing.assert_array_equal(order, again)  # seeded


def test_random_policy_is_a_seeded_permutation() -> None:
    eligible = np.arange(5, 50)
    a, _ = priority("random", eligible, 3, 50)
    b, _ = priority("random", eligible, 3, 50)
    c, _ = priority("random", eligible, 4, 50)
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == eligible.tolist() and not np.array_equal(a, c)
    # One permutation of all items: fewer eligible items keep their relative order.
    d, _ = priority("random", eligible[::2], 3, 50)
    np.testing.assert_array_equal(d, a[np.isin(a, eligible[::2])])


def test_label_policies_need_labels() -> None:
    with pytest.raises(InputError, match="no class labels; use --policy random"):
        priority("uncertainty", np.arange(4), 0, 4, None)
    with pytest.raises(InputError, match="--policy 'oldest'"):
        priority("oldest", np.arange(4), 0, 4, np.zeros(4, dtype=np.int64))


# ----------------------------------------------------------------------------- backfill


@pytest.fixture(params=ENGINES)
def index(request, models, tiny, tmp_path: Path) -> str:
    uri = gallery_uri(tmp_path, request.param)
    build_index(models["v1"], str(tiny["gallery"]), uri)
    return uri


def _state(uri: str) -> tuple[list[str], np.ndarray]:
    with Gallery.open(uri) as g:
        return g.column("version"), g.vectors(np.arange(g.count))


def test_backfill_reaches_the_target_and_embeds_with_new(index: str, models, tiny) -> None:
    v1, v2 = (load_embedder(models[k]).fingerprint for k in ("v1", "v2"))
    with Gallery.open(index) as g:
        before = g.vectors(np.arange(72))
        m = margins(VectorSource.of_array(before), g.column("label"))
    least_confident = np.sort(np.lexsort((np.arange(72), m))[:18])
    rep = backfill(index, models["v2"], 0.25, policy="uncertainty", chunk=5)
    versions, after = _state(index)
    assert (rep.target, rep.embedded, rep.chunks) == (18, 18, 4)  # 25% of 72 items
    new = np.flatnonzero(np.array(versions) == v2)
    np.testing.assert_array_equal(new, least_confident)
    # The stored vectors are v2's embeddings of those images, as the gallery stores them.
    data = load_user_data(str(tiny["gallery"]))
    want = load_embedder(models["v2"]).embed(data.subset(torch.from_numpy(new))).numpy()
    np.testing.assert_allclose(after[new], want, atol=1e-3)
    old = np.flatnonzero(np.array(versions) == v1)
    np.testing.assert_array_equal(after[old], before[old])
    # A re-run is a no-op; a larger target adds only the difference.
    assert backfill(index, models["v2"], 0.25, policy="uncertainty", chunk=5).embedded == 0
    rep = backfill(index, models["v2"], 0.5, policy="random", chunk=50)
    with Gallery.open(index) as g:
        assert rep.embedded == 18 and g.counts == {v1: 36, v2: 36}
        assert g.store.get_record("plan") is None


def test_a_pending_plan_is_finished_only_by_its_own_command(index: str, models) -> None:
    backfill(index, models["v2"], 0.5, policy="random", seed=1, chunk=9)
    other = load_embedder(models["other"])
    with Gallery.open(index) as g:  # a plan of another backfill, nothing committed yet
        from compatkit.upgrade.ledger import version_record

        had = g.counts.get(other.fingerprint, 0)
        pending = {
            "format": "compatkit-backfill-plan",
            "new": other.fingerprint,
            "fraction": 0.75,
            "policy": "random",
            "seed": 1,
            "chunk": 9,
            "had": had,
            "model": "other.pt",
            "decided": {},
            "order": list(range(54)),
        }
        g.store.put_records(
            {"plan": pending, f"version/{other.fingerprint}": version_record(other, "other.pt")}
        )
    with pytest.raises(InputError, match=r"unfinished backfill .* policy random, fraction 0.75"):
        backfill(index, models["v2"], 0.75, policy="random", seed=1, chunk=9)
    rep = backfill(index, models["v2"], 0.75, replan=True, policy="random", seed=1, chunk=9)
    with Gallery.open(index) as g:
        assert rep.embedded == 18 and g.store.get_record("plan") is None


def test_the_source_must_still_be_the_gallery(models, tiny, tmp_path: Path) -> None:
    index = gallery_uri(tmp_path, "lancedb")
    build_index(models["v1"], str(tiny["gallery"]), index)
    moved = tmp_path / "moved"
    shutil.copytree(tiny["gallery"], moved)
    (moved / "ant" / "000.png").unlink()
    before = _state(index)
    with pytest.raises(DataError, match=r"71 images but index .* holds 72 items"):
        backfill(index, models["v2"], 0.1, data=str(moved))
    shutil.copy(moved / "ant" / "001.png", moved / "ant" / "000.png")
    (moved / "bee" / "003.png").rename(moved / "bee" / "999.png")
    with pytest.raises(
        DataError, match=r"item 27 is 'bee/004\.png' but the index has 'bee/003\.png'"
    ):
        backfill(index, models["v2"], 0.1, data=str(moved))
    after = _state(index)  # refused: nothing written, no plan left behind
    assert after[0] == before[0] and np.array_equal(after[1], before[1])
    with Gallery.open(index) as g:
        assert g.store.get_record("plan") is None and len(g.versions) == 1
    (moved / "bee" / "999.png").rename(moved / "bee" / "003.png")
    assert backfill(index, models["v2"], 0.1, data=str(moved)).embedded == 7


def test_other_feature_sizes_and_bad_arguments_are_refused(models, tiny, tmp_path: Path) -> None:
    index = gallery_uri(tmp_path, "lancedb")
    build_index(models["v1"], str(tiny["gallery"]), index)
    wide = wide_model(tiny, tmp_path / "k32.pt")
    with pytest.raises(IncompatibleModels, match="31-dimensional features but index"):
        backfill(index, wide, 0.5)
    for kw, msg in (
        ({"fraction": 1.5}, "must lie in"),
        ({"fraction": float("nan")}, "must lie in"),
        ({"fraction": 0.5, "chunk": 0}, "--chunk 0"),
        ({"fraction": 0.5, "chunk": 10**30}, "--chunk"),
        ({"fraction": 0.5, "policy": "fifo"}, "--policy 'fifo'"),
    ):
        with pytest.raises(InputError, match=msg):
            backfill(index, models["v2"], **kw)


# ----------------------------------------------------------------------------- workers


def test_parse_worker_reads_i_of_n_and_refuses_the_rest() -> None:
    assert parse_worker("1/1") == (1, 1) and parse_worker("3/4") == (3, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "1/0", "-1/3", f"1/{MAX_WORKERS + 1}", "1/4/5"):
        with pytest.raises(InputError, match="--worker"):
            parse_worker(bad)


def test_workers_share_a_plan_and_end_in_the_one_process_gallery(models, tiny, tmp_path) -> None:
    """Three workers, run one after the other here (the CLI tests run them at once): each
    embeds only its own chunks, the plan stays until the last share is in, and the gallery
    equals the one a single process makes, vector for vector."""
    one, shared = (gallery_uri(tmp_path / k, "lancedb") for k in ("one", "shared"))
    for uri in (one, shared):
        build_index(models["v1"], str(tiny["gallery"]), uri)
    kw = {"policy": "uncertainty", "chunk": 5}
    backfill(one, models["v2"], 0.5, **kw)
    with pytest.raises(InputError, match="no backfill plan for these arguments"):
        backfill(shared, models["v2"], 0.5, worker=(1, 3), **kw)
    planned = backfill(shared, models["v2"], 0.5, plan_only=True, **kw)
    assert (planned.embedded, planned.chunks, planned.plan["items"]) == (0, 8, 36)
    with Gallery.open(shared) as g:
        order = g.store.get_record("plan")["order"]
    chunks = [sorted(order[a : a + 5]) for a in range(0, 36, 5)]
    v2 = load_embedder(models["v2"]).fingerprint
    for i in (2, 3, 1):
        rep = backfill(shared, models["v2"], 0.5, worker=(i, 3), **kw)
        mine = [p for c in chunks[i - 1 :: 3] for p in c]
        versions, _ = _state(shared)
        assert rep.embedded == len(mine) and rep.own_chunks == len(chunks[i - 1 :: 3])
        assert all(versions[p] == v2 for p in mine)
        with Gallery.open(shared) as g:
            assert (g.store.get_record("plan") is None) == (i == 1) == rep.finished
    versions, vectors = _state(shared)
    assert (versions, vectors.tobytes()) == (_state(one)[0], _state(one)[1].tobytes())
    # A worker started again after the end has nothing to do.
    assert backfill(shared, models["v2"], 0.5, worker=(2, 3), **kw).embedded == 0


def test_worker_refusals(models, tiny, tmp_path: Path) -> None:
    lance = gallery_uri(tmp_path, "lancedb")
    build_index(models["v1"], str(tiny["gallery"]), lance)
    with pytest.raises(InputError, match=r"plan .* first, once, without --worker"):
        backfill(lance, models["v2"], 0.5, worker=(1, 2), replan=True)
    backfill(lance, models["v2"], 0.5, plan_only=True, seed=3)
    with pytest.raises(InputError, match=r"unfinished backfill .* seed 3"):
        backfill(lance, models["v2"], 0.5, worker=(1, 2), seed=4)
    lite = gallery_uri(tmp_path, "milvus-lite")
    build_index(models["v1"], str(tiny["gallery"]), lite)
    with pytest.raises(InputError, match=r"Milvus Lite .* serves one process at a time"):
        backfill(lite, models["v2"], 0.5, worker=(1, 2))
    backfill(lite, models["v2"], 0.5, plan_only=True)  # one worker of one is the plain run
    assert backfill(lite, models["v2"], 0.5, worker=(1, 1)).embedded == 36
