"""Data roles of a plan: which images a ``per_class`` selection takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compatkit.config import ConfigError, load_config
from compatkit.data import load_dataset
from compatkit.protocol.plan import make_plan

TINY = Path(__file__).parent / "e2e" / "tiny.yaml"


def _local(fake_fashion, select: str):
    # Every role (providers, gallery, query) reads the small files, not an installed dataset:
    # the plan draws them all, and CI has no Fashion-MNIST.
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))
    try:
        cfg = load_config(TINY, [f"local.data.select={select}"])
        return make_plan(cfg).local
    finally:
        mp.undo()


def test_select_first_takes_the_first_images_of_each_class_in_file_order(fake_fashion):
    full = load_dataset("fashion-mnist", "train", fake_fashion)
    local = _local(fake_fashion, "first")
    for c in range(4):  # tiny.yaml: classes 0..3, 16 images each
        first = torch.nonzero(full.labels == c).flatten()[:16]
        assert torch.equal(local.images[local.labels == c], full.images[first])


def test_select_random_draws_other_images(fake_fashion):
    full = load_dataset("fashion-mnist", "train", fake_fashion)
    local = _local(fake_fashion, "random")
    first = torch.nonzero(full.labels == 0).flatten()[:16]
    assert len(local.images[local.labels == 0]) == 16
    assert not torch.equal(local.images[local.labels == 0], full.images[first])


def test_select_is_validated():
    with pytest.raises(ConfigError, match=r"local.data.select must be one of random, first"):
        load_config(TINY, ["local.data.select=last"])


def test_class_order_changes_the_tasks_not_the_partition(fake_fashion, monkeypatch):
    """Reordering local.data.classes reorders the tasks only: each class gets the same images,
    the providers the same images, and the provider cache key stays the same."""
    from compatkit.protocol.plan import provider_key

    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))
    a = load_config(TINY, ["local.data.classes=[0,1,2,3]"])
    b = load_config(TINY, ["local.data.classes=[3,1,0,2]"])
    pa, pb = make_plan(a), make_plan(b)
    assert pa.class_order == [0, 1, 2, 3] and pb.class_order == [3, 1, 0, 2]
    assert pb.scenario.task_classes(0) == [3, 1]
    for c in range(4):
        assert torch.equal(
            pa.local.images[pa.local.labels == c], pb.local.images[pb.local.labels == c]
        )
    for da, db in zip(pa.providers, pb.providers, strict=True):
        assert torch.equal(da.images, db.images) and torch.equal(da.labels, db.labels)
    assert torch.equal(pa.query.images, pb.query.images)
    assert provider_key(a, 0, "simplex") == provider_key(b, 0, "simplex")
    c = load_config(TINY, ["local.data.classes=[0,1,2]", "local.initial_increment=1"])
    assert provider_key(a, 0, "simplex") != provider_key(c, 0, "simplex")
