"""The backfill curve: each point is what a real backfill to that fraction would serve, its
ends are the new/old and new/new cross tests, and the index on disk is left as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from compatkit.errors import InputError
from compatkit.retrieval import recall_at_k, template_accuracy
from compatkit.upgrade.backfill import backfill
from compatkit.upgrade.build import build_index
from compatkit.upgrade.curve import backfill_curve, render_table, write_curve
from compatkit.upgrade.embed import load_embedder
from compatkit.upgrade.index import Gallery, class_lookup, load_for_model

from .index_helpers import trained_models


@pytest.fixture(scope="session")
def models(tmp_path_factory, tiny) -> dict[str, Path]:
    return trained_models(tmp_path_factory, tiny)


@pytest.fixture(scope="module")
def index(models, tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("curve") / "idx"
    build_index(models["v1"], str(tiny["gallery"]), root)
    return root


@pytest.fixture(scope="module")
def curve(index, models, tiny) -> dict:
    return backfill_curve(index, models["v1"], models["v2"], str(tiny["query"]), steps=4, seed=3)


def _served(root: Path, model: Path, query: Path) -> dict[str, float]:
    """recall@1 and template accuracy of ``model``'s queries on the index as it is on disk."""
    emb = load_embedder(model)
    data, _ = load_for_model(emb, str(query))
    q = emb.embed(data)
    with Gallery.open(root) as g:
        qy = torch.from_numpy(class_lookup(g, [data.classes[int(y)] for y in data.labels]))
        gv, gy = (
            torch.from_numpy(g.vectors(np.arange(g.count))),
            torch.from_numpy(g.column("label")),
        )
    return {
        "recall@1": recall_at_k(q, qy, gv, gy, ks=(1,))[1],
        "template": template_accuracy(q, qy, gv, gy),
    }


def test_points_are_what_a_real_backfill_serves(curve, index, models, tiny, tmp_path) -> None:
    assert curve["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for policy in ("random", "uncertainty", "class"):
        copy = Path(shutil.copytree(index, tmp_path / policy))
        for i in (1, 2):  # 25 %, then 50 % on top: the same plan extended
            backfill(copy, models["v2"], curve["fractions"][i], policy=policy, seed=3, chunk=7)
            served = _served(copy, models["v2"], tiny["query"])
            for m in ("recall@1", "template"):
                assert curve["policies"][policy][m][i] == pytest.approx(served[m], abs=1e-9), (
                    policy,
                    m,
                    i,
                )


def test_the_ends_are_the_cross_tests(curve, index, models, tiny) -> None:
    ref = curve["reference"]
    assert ref["old/old"] == pytest.approx(_served(index, models["v1"], tiny["query"]))
    assert ref["new/old"] == pytest.approx(_served(index, models["v2"], tiny["query"]))
    for c in curve["policies"].values():
        for m in ("recall@1", "template"):
            assert c[m][0] == pytest.approx(ref["new/old"][m])
            assert c[m][-1] == pytest.approx(ref["new/new"][m])
    assert curve["items"] == 72 and curve["queries"] == 60


def test_the_index_is_untouched_and_the_outputs_are_written(curve, index, tmp_path) -> None:
    files = sorted(p.relative_to(index) for p in index.rglob("*"))
    with Gallery.open(index) as g:
        assert list(g.counts.values()) == [72] and g.store.table_version() == 2
    out = write_curve(curve, tmp_path / "out")
    assert out["plot"].read_bytes()[:4] == b"\x89PNG"
    table = out["table"].read_text()
    assert table == render_table(curve) + "\n"
    rows = [line for line in table.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 5 and rows[2].startswith("| 50% |")
    cells = rows[2].strip("| ").split(" | ")
    assert float(cells[1]) == pytest.approx(curve["policies"]["random"]["recall@1"][2], abs=0.005)
    assert sorted(p.relative_to(index) for p in index.rglob("*")) == files


def test_bad_arguments(index, models, tiny) -> None:
    with pytest.raises(InputError, match="--steps 0"):
        backfill_curve(index, models["v1"], models["v2"], str(tiny["query"]), steps=0)
    with pytest.raises(InputError, match="unknown policy 'fifo'"):
        backfill_curve(index, models["v1"], models["v2"], str(tiny["query"]), policies=["fifo"])


def test_curve_of_a_partly_backfilled_index(index, models, tiny, tmp_path, curve) -> None:
    """OLD's vectors of items already re-embedded are embedded again: the same curve."""
    copy = Path(shutil.copytree(index, tmp_path / "partly"))
    backfill(copy, models["v2"], 0.4, policy="random", seed=9, chunk=50)
    again = backfill_curve(copy, models["v1"], models["v2"], str(tiny["query"]), steps=4, seed=3)
    for p in ("random", "uncertainty"):
        np.testing.assert_allclose(
            again["policies"][p]["recall@1"], curve["policies"][p]["recall@1"]
        )
