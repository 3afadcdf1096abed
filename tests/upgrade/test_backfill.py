"""Backfill policies against slow obvious loops, and the backfill itself on real checkpoints:
a target fraction, no-op re-runs, a pending plan that only its own command may finish, and
source data that must still be the gallery's."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from compatkit.errors import DataError, IncompatibleModels, InputError
from compatkit.upgrade.backfill import backfill, class_drift, margins, priority
from compatkit.upgrade.data import load_user_data
from compatkit.upgrade.embed import load_embedder
from compatkit.upgrade.index import build_index
from compatkit.upgrade.index_store import PLAN, Gallery, IndexWriter

from .index_helpers import trained_models
from .test_index_store import unit_rows


@pytest.fixture(scope="session")
def models(tmp_path_factory, tiny) -> dict[str, Path]:
    return trained_models(tmp_path_factory, tiny)


# ----------------------------------------------------------------------------- policies


def test_margins_by_a_slow_loop() -> None:
    x = unit_rows(30, 6, 0)
    labels = np.array([i % 3 for i in range(30)])
    got = margins(lambda p: x[p], labels, rows=7)
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
    order, why = priority("uncertainty", eligible, 0, 40, labels, stored=lambda p: x[p])
    m = margins(lambda p: x[p], labels)
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
    order, why = priority(
        "class", eligible, 7, 60, labels, stored=lambda p: old[p], new=lambda p: new[p]
    )
    assert why["class_order"] == [2, 0, 1]  # class 1 did not move at all
    assert [set(labels[order[a : a + 20]].tolist()) for a in (0, 20, 40)] == [{2}, {0}, {1}]
    drift = class_drift(lambda p: old[p], lambda p: new[p], labels, eligible, 7, sample=5)
    for c in range(3):  # 5 sampled items per class: their mean 1 - cos lies in the class's range
        full = 1 - np.sum(old[labels == c] * new[labels == c], axis=1)
        assert full.min() - 1e-9 <= drift[c] <= full.max() + 1e-9
    assert drift[1] == pytest.approx(0.0, abs=1e-6)
    again, _ = priority(
        "class", eligible, 7, 60, labels, stored=lambda p: old[p], new=lambda p: new[p]
    )
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


@pytest.fixture
def index(models, tiny, tmp_path: Path) -> Path:
    root = tmp_path / "idx"
    build_index(models["v1"], str(tiny["gallery"]), root, shard_rows=32)
    return root


def test_backfill_reaches_the_target_and_embeds_with_new(index: Path, models, tiny) -> None:
    before = Gallery.open(index)
    m = margins(before.vectors, before.labels)
    least_confident = np.sort(np.lexsort((np.arange(72), m))[:18])
    rep = backfill(index, models["v2"], 0.25, policy="uncertainty", chunk=5)
    g = Gallery.open(index)
    assert (rep.target, rep.embedded, rep.chunks) == (18, 18, 4)  # 25% of 72 items
    assert g.counts_by_version() == {0: 54, 1: 18}
    new = np.flatnonzero(g.version_of == 1)
    np.testing.assert_array_equal(new, least_confident)
    # The stored vectors are v2's embeddings of those images, rounded to float16.
    data = load_user_data(str(tiny["gallery"]))
    want = load_embedder(models["v2"]).embed(data.subset(torch.from_numpy(new))).numpy()
    np.testing.assert_allclose(g.vectors(new), want, atol=1e-3)
    np.testing.assert_array_equal(
        g.vectors(np.flatnonzero(g.version_of == 0)),
        before.vectors(np.flatnonzero(g.version_of == 0)),
    )
    # A re-run is a no-op; a larger target adds only the difference.
    assert backfill(index, models["v2"], 0.25, policy="uncertainty", chunk=5).embedded == 0
    rep = backfill(index, models["v2"], 0.5, policy="random", chunk=50)
    assert rep.embedded == 18 and Gallery.open(index).counts_by_version() == {0: 36, 1: 36}
    assert not (index / PLAN).exists()


def test_full_backfill_leaves_only_new_shards(index: Path, models) -> None:
    backfill(index, models["v2"], 1.0, policy="class", chunk=64)
    g = Gallery.open(index)
    assert g.counts_by_version() == {1: 72} and all(sh["version"] == 1 for sh in g.shards)
    assert sorted(p.name for p in (index / "shards").iterdir()) == sorted(
        Path(sh[k]).name for sh in g.shards for k in ("file", "items")
    )


def test_a_pending_plan_is_finished_only_by_its_own_command(index: Path, models) -> None:
    backfill(index, models["v2"], 0.5, policy="random", seed=1, chunk=9)
    # Simulate a kill: the plan of a second backfill is written, nothing committed yet.
    plan_args = dict(policy="random", seed=1, chunk=9)
    with IndexWriter(index) as w:
        pending = {
            "format": "compatkit-backfill-plan",
            "new": load_embedder(models["other"]).fingerprint,
            "fraction": 0.75,
            **plan_args,
            "order": [0, 1, 2],
        }
        w.write_side(PLAN, pending)
    with pytest.raises(InputError, match=r"unfinished backfill .* policy random, fraction 0.75"):
        backfill(index, models["v2"], 0.75, **plan_args)
    rep = backfill(index, models["v2"], 0.75, replan=True, **plan_args)
    assert rep.embedded == 18 and not (index / PLAN).exists()


def test_the_source_must_still_be_the_gallery(index: Path, models, tiny, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(tiny["gallery"], moved)
    (moved / "ant" / "000.png").unlink()
    with pytest.raises(DataError, match=r"71 images but index .* holds 72 items"):
        backfill(index, models["v2"], 0.1, data=str(moved))
    shutil.copy(moved / "ant" / "001.png", moved / "ant" / "000.png")
    (moved / "bee" / "003.png").rename(moved / "bee" / "999.png")
    with pytest.raises(
        DataError, match=r"item 27 is 'bee/004\.png' but the index has 'bee/003\.png'"
    ):
        backfill(index, models["v2"], 0.1, data=str(moved))
    assert Gallery.open(index).counts_by_version() == {0: 72}  # nothing written
    (moved / "bee" / "999.png").rename(moved / "bee" / "003.png")
    assert backfill(index, models["v2"], 0.1, data=str(moved)).embedded == 7


def test_other_feature_sizes_are_refused(index: Path, models, tiny, tmp_path: Path) -> None:
    from compatkit.runtime.log import RunLog
    from compatkit.upgrade.train import TrainOptions, train_model

    wide = tmp_path / "k32.pt"
    train_model(
        str(tiny["v1"]),
        wide,
        TrainOptions(epochs=1, num_classes=32, device="cpu"),
        log=RunLog(None, quiet=True),
    )
    with pytest.raises(IncompatibleModels, match="31-dimensional features but index"):
        backfill(index, wide, 0.5)
    for bad, msg in ((1.5, "must lie in"), (-0.1, "must lie in")):
        with pytest.raises(InputError, match=msg):
            backfill(index, models["v2"], bad)
