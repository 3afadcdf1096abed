"""Batch sources: image files read by DataLoader workers at the sampler's planned positions
give the batches the same files give held in memory; unreadable files skipped and counted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compatkit.data import augment
from compatkit.data.collection import list_folder
from compatkit.data.folder import collection_imageset
from compatkit.data.imageset import ImageSet
from compatkit.data.preprocess import Preprocess
from compatkit.data.sampler import epoch_plan
from compatkit.data.sources import (
    InMemory,
    MemoryBudget,
    Skips,
    Streamed,
    source_stats,
)
from compatkit.errors import DataError

from ..upgrade.folders import write_varied_folder

PRE = Preprocess.square(3, 24, [0.5] * 3, [0.25] * 3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_varied_folder(
        tmp_path_factory.mktemp("sources"), {"ant": 9, "bee": 8, "cat": 8}, 7
    )


def _memory() -> ImageSet:
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (6, 3, 24, 24), generator=g, dtype=torch.uint8)
    return ImageSet(images, torch.tensor([0, 1, 2, 0, 1, 2]), ["ant", "bee", "cat"])


def _epoch(source, memory, sampler: str, seed: int = 3) -> list[tuple[torch.Tensor, ...]]:
    """One epoch as the trainer draws it: each batch followed by its augmentation's draws."""
    g = torch.Generator().manual_seed(seed)
    return [
        (x.clone(), y.clone(), augment(x, 2, True, g))
        for x, y in source.batches(memory, 8, g, sampler)
    ]


@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_in_memory_batches(folder, workers, with_memory) -> None:
    coll = list_folder(folder)
    held, kept = collection_imageset(coll, PRE)
    assert len(kept) == len(coll) == 25
    memory = _memory() if with_memory else None
    a = _epoch(InMemory(held), memory, "shuffle")
    b = _epoch(Streamed(coll, PRE, workers), memory, "shuffle")
    assert len(a) == len(b) == (7 if with_memory else 3)  # a lone 25th image is dropped
    for (xa, ya, aug_a), (xb, yb, aug_b) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(aug_a, aug_b)
    # A second epoch with another seed orders the images otherwise.
    assert not torch.equal(_epoch(InMemory(held), memory, "shuffle", 4)[0][0], a[0][0])


def test_balanced_plan_read_from_files(folder) -> None:
    """The balanced sampler draws per batch; the streamed source draws the epoch's plan
    before reading (workers read ahead), so the two agree when nothing else draws from the
    generator between batches, and always in the positions they read."""
    coll = list_folder(folder)
    held, _ = collection_imageset(coll, PRE)
    memory = _memory()
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = list(InMemory(held).batches(memory, 8, ga, "balanced"))
    b = list(Streamed(coll, PRE).batches(memory, 8, gb, "balanced"))
    assert len(a) == len(b) == 3  # (25 + 6) // 8
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    plan = list(epoch_plan(25, 6, 8, torch.Generator().manual_seed(1), "balanced"))
    assert [len(n) + len(m) for n, m in plan] == [8, 8, 8]


def test_ordered_subsets_labels_and_statistics(folder) -> None:
    coll = list_folder(folder)
    held, _ = collection_imageset(coll, PRE)
    mem, st = InMemory(held), Streamed(coll, PRE, 0)
    assert torch.equal(mem.labels, st.labels) and mem.input_size == st.input_size == (3, 24, 24)
    idx = torch.tensor([3, 0, 24, 11])
    (xa, ya), (xb, yb) = next(mem.subset(idx).ordered(8)), next(st.subset(idx).ordered(8))
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and len(ya) == 4
    lut = torch.tensor([2, 0, 1])
    assert torch.equal(st.map_labels(lut, ["c", "a", "b"]).labels, lut[held.labels])
    assert source_stats(mem) == source_stats(st)
    assert source_stats(mem, limit=10, seed=1) == source_stats(st, limit=10, seed=1)
    assert source_stats(mem, limit=10, seed=1) != source_stats(mem)


def test_unreadable_file_skipped_once_counted_and_named(folder, tmp_path) -> None:
    root = write_varied_folder(tmp_path / "d", {"ant": 5, "bee": 5}, 8)
    broken = root / "bee" / "zz_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    coll = list_folder(root)
    notes: list[str] = []
    skips = Skips(note=notes.append)
    src = Streamed(coll, PRE, 0, skips=skips)
    for epoch in range(2):
        got = sum(len(y) for _, y in src.batches(None, 4, torch.Generator().manual_seed(epoch)))
        assert got == 10  # the eleventh file is never in a batch
    assert skips.report.skipped == 1 and len(notes) == 1 and str(broken) in notes[0]
    assert src.unreadable() == 1 and src.subset([0, 1]).unreadable() == 0
    strict = Streamed(coll, PRE, 0, skips=Skips(strict=True))
    with pytest.raises(DataError, match=r"zz_broken\.png"):
        list(strict.ordered(4))


def test_memory_budget_takes_what_fits() -> None:
    budget = MemoryBudget(1000)
    assert budget.take(600) and not budget.take(600) and budget.take(400)
    assert budget.left == 0 and budget.total == 1000
    assert MemoryBudget.of("cpu").total > 0
