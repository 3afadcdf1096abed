"""Rehearsal memory: per-class cap, new classes only, reproducibility, state round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compatkit.data import ClassIncremental, RehearsalMemory

from .helpers import make_set, sample_ids


def counts(mem: RehearsalMemory) -> dict[int, int]:
    s = mem.as_imageset()
    assert s is not None
    return {int(c): int((s.labels == c).sum()) for c in s.labels.unique()}


def test_empty_memory() -> None:
    mem = RehearsalMemory(per_class=3)
    assert len(mem) == 0 and mem.as_imageset() is None and mem.classes == []
    with pytest.raises(ValueError):
        RehearsalMemory(per_class=0)


def test_per_class_images_of_new_classes_only() -> None:
    data = make_set([10, 10, 10, 10, 2])
    sc = ClassIncremental(data, [0, 1, 2, 3, 4], 2, 1)
    mem = RehearsalMemory(per_class=4, seed=0)
    mem.update(sc[0].data)
    assert counts(mem) == {0: 4, 1: 4} and mem.classes == [0, 1]
    first = mem.as_imageset()
    # The same classes again (e.g. the task re-seen, or the memory itself) change nothing.
    mem.update(sc[0].data)
    mem.update(first)
    assert torch.equal(mem.as_imageset().images, first.images)
    # A later task adds only its own classes; earlier picks are kept as they were.
    mem.update(data.select_classes([1, 2]))
    assert counts(mem) == {0: 4, 1: 4, 2: 4} and mem.classes == [0, 1, 2]
    assert torch.equal(mem.as_imageset().images[:8], first.images)
    # A class with fewer images than per_class stores what it has, never more.
    mem.update(sc[2].data)  # class 3
    mem.update(sc[3].data)  # class 4: only 2 images
    assert counts(mem) == {0: 4, 1: 4, 2: 4, 3: 4, 4: 2}
    assert len(mem) == 18
    # Stored images are real samples of their class, without repeats.
    s = mem.as_imageset()
    ids = sample_ids(s.images)
    assert len(set(ids.tolist())) == 18
    assert torch.equal(data.labels[ids], s.labels)
    assert torch.equal(data.images[ids], s.images)
    assert s.classes == data.classes


def test_reproducible_from_seed_and_independent_of_history() -> None:
    data = make_set([30] * 4)

    def stored(seed: int, chunks: list[list[int]]) -> dict[int, list[int]]:
        mem = RehearsalMemory(per_class=5, seed=seed)
        for cl in chunks:
            mem.update(data.select_classes(cl))
        s = mem.as_imageset()
        ids = sample_ids(s.images)
        return {c: sorted(ids[s.labels == c].tolist()) for c in range(4)}

    a = stored(0, [[0, 1], [2, 3]])
    assert a == stored(0, [[0, 1], [2, 3]])
    assert a == stored(0, [[3], [0, 2, 1]])  # same pick per class whatever the order
    assert a != stored(1, [[0, 1], [2, 3]])


def test_state_dict_round_trip_weights_only(tmp_path: Path) -> None:
    data = make_set([8, 8, 8])
    mem = RehearsalMemory(per_class=3, seed=7)
    mem.update(data.select_classes([2, 0]))
    path = tmp_path / "mem.pt"
    torch.save(mem.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, (int, torch.Tensor)) for v in state.values())
    back = RehearsalMemory(per_class=1)
    back.load_state_dict(state)
    assert back.per_class == 3 and back.seed == 7 and back.classes == mem.classes
    a, b = mem.as_imageset(), back.as_imageset()
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.classes == b.classes
    # The restored memory continues exactly like the original would.
    mem.update(data)
    back.update(data)
    assert torch.equal(mem.as_imageset().images, back.as_imageset().images)

    empty = RehearsalMemory(per_class=2)
    torch.save(empty.state_dict(), path)
    again = RehearsalMemory(per_class=5)
    again.load_state_dict(torch.load(path, weights_only=True))
    assert len(again) == 0 and again.as_imageset() is None and again.per_class == 2


def test_load_state_dict_refuses_inconsistent_state() -> None:
    mem = RehearsalMemory(per_class=3)
    mem.update(make_set([5, 5]))
    state = mem.state_dict()
    bad = dict(state, per_class=2)
    with pytest.raises(ValueError, match="per_class"):
        RehearsalMemory(1).load_state_dict(bad)
    with pytest.raises(ValueError, match="classes"):
        RehearsalMemory(1).load_state_dict(dict(state, classes=torch.tensor([0])))
    with pytest.raises(KeyError, match="images"):
        RehearsalMemory(1).load_state_dict({k: v for k, v in state.items() if k != "images"})


def test_refuses_another_dataset() -> None:
    mem = RehearsalMemory(per_class=2)
    mem.update(make_set([3, 3]))
    other = make_set([3, 3])
    other.classes = ["x", "y"]
    with pytest.raises(ValueError, match="class names"):
        mem.update(other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_restored_cpu_memory_joins_the_gpu_on_update() -> None:
    data = make_set([6, 6, 6])
    mem = RehearsalMemory(per_class=2)
    mem.update(data.select_classes([0]))
    back = RehearsalMemory(per_class=2)
    back.load_state_dict(mem.state_dict())
    back.update(data.select_classes([1]).to("cuda"))
    assert back.as_imageset().images.is_cuda and len(back) == 4
