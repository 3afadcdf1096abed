"""Class-incremental scenario: disjoint tasks, counts, order, validation, sub-sampling."""

from __future__ import annotations

import pytest
import torch

from compatkit.data import ClassIncremental, Task

from .helpers import make_set, sample_ids


def test_tasks_follow_class_order_with_right_counts() -> None:
    data = make_set([5] * 10, shuffle=True)
    order = [7, 2, 9, 0, 4, 1, 3, 8, 6, 5]
    sc = ClassIncremental(data, order, initial_increment=4, increment=3)
    assert len(sc) == 3 == ClassIncremental.num_tasks_for(10, 4, 3)
    tasks = list(sc)
    assert [t.classes for t in tasks] == [[7, 2, 9, 0], [4, 1, 3], [8, 6, 5]]
    assert [t.task_id for t in tasks] == [0, 1, 2]
    seen: set[int] = set()
    for t in tasks:
        assert isinstance(t, Task)
        labels = set(t.data.labels.tolist())
        assert labels == set(t.classes)  # only its classes, all of them
        assert not labels & seen  # no class in two tasks
        seen |= labels
        assert len(t.data) == 5 * len(t.classes)  # every image of those classes
        expected = [i for i in range(len(data)) if int(data.labels[i]) in t.classes]
        assert sample_ids(t.data.images).tolist() == expected  # dataset order
        assert t.data.classes == data.classes
    assert seen == set(range(10))
    assert sc[-1].classes == [8, 6, 5]
    assert sc.seen_classes(1) == [7, 2, 9, 0, 4, 1, 3]
    with pytest.raises(IndexError):
        sc[3]


def test_subset_of_classes_and_single_task() -> None:
    data = make_set([2] * 6)
    sc = ClassIncremental(data, [5, 3], initial_increment=2, increment=1)
    assert len(sc) == 1 and sc[0].classes == [5, 3]
    assert set(sc[0].data.labels.tolist()) == {3, 5}


@pytest.mark.parametrize(
    ("order", "initial", "inc", "per_class", "match"),
    [
        ([0, 1, 1, 2], 2, 1, None, "more than once"),
        ([0, 1, 2, 6], 2, 1, None, r"\[6\]"),  # label 6 has no images
        ([0, 1, -1], 1, 1, None, r"\[-1\]"),
        ([0, 1, 2, 3], 0, 1, None, "positive"),
        ([0, 1, 2, 3], 2, 0, None, "positive"),
        ([0, 1, 2, 3], 2, -1, None, "positive"),
        ([0, 1, 2, 3], 5, 1, None, "more than"),
        ([0, 1, 2, 3, 4], 2, 2, None, "not a multiple"),
        ([0, 1, 2, 3], 2, 1, 5, "fewer images"),
        ([0, 1, 2, 3], 2, 1, 0, ">= 1"),
        ([], 2, 1, None, "empty"),
    ],
)
def test_impossible_splits_are_refused(order, initial, inc, per_class, match) -> None:
    data = make_set([4, 4, 4, 4, 4, 0])  # class 5 exists by name but has no images
    with pytest.raises(ValueError, match=match):
        ClassIncremental(data, order, initial, inc, images_per_class=per_class)


def test_images_per_class_reproducible_and_seed_dependent() -> None:
    data = make_set([20] * 6)
    order = [3, 1, 4, 0, 5, 2]

    def picked(seed: int, class_order=order) -> dict[int, list[int]]:
        sc = ClassIncremental(data, class_order, 2, 2, images_per_class=7, seed=seed)
        out = {}
        for t in sc:
            ids = sample_ids(t.data.images)
            for c in t.classes:
                mask = t.data.labels == c
                assert int(mask.sum()) == 7
                out[c] = ids[mask].tolist()
        return out

    a, b, other = picked(0), picked(0), picked(1)
    assert a == b
    assert a != other
    for c in range(6):  # a sub-sample of the class, no repeats
        chosen = a[c]
        assert len(set(chosen)) == 7
        assert all(int(data.labels[i]) == c for i in chosen)
    # The pick of a class does not depend on the class order (resume-safe, comparable runs).
    assert picked(0, class_order=[0, 1, 2, 3, 4, 5]) == a


def test_repr_and_num_tasks_for() -> None:
    assert ClassIncremental.num_tasks_for(100, 10, 15) == 7  # the paper's 7-task split
    assert ClassIncremental.num_tasks_for(100, 10, 3) == 31  # and its 31-task split
    sc = ClassIncremental(make_set([1] * 4), [0, 1, 2, 3], 2, 2)
    assert "2 tasks" in repr(sc)
    assert torch.equal(sc[0].data.labels.sort()[0], torch.tensor([0, 1]))
