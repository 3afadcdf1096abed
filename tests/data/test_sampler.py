"""Half-and-half sampler: exact halves, one pass over new data, even memory use."""

from __future__ import annotations

import pytest
import torch

from compatkit.data import balanced_batches, epoch_batches, half_and_half_batches, steps_per_epoch

from .helpers import make_set, sample_ids


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_without_memory_each_sample_once_last_partial_kept() -> None:
    new = make_set([7, 6])  # 13 samples
    batches = list(half_and_half_batches(new, None, 5, gen()))
    assert [len(x) for x, _ in batches] == [5, 5, 3]
    ids = torch.cat([sample_ids(x) for x, _ in batches])
    assert sorted(ids.tolist()) == list(range(13))
    for x, y in batches:
        assert x.dtype == torch.uint8
        assert torch.equal(y, new.labels[sample_ids(x)])  # labels travel with their images
    assert ids.tolist() != list(range(13))  # shuffled


def test_without_memory_final_batch_of_one_is_dropped() -> None:
    new = make_set([6, 5])  # 11 = 5 + 5 + 1
    batches = list(half_and_half_batches(new, None, 5, gen()))
    assert [len(x) for x, _ in batches] == [5, 5]
    assert list(half_and_half_batches(make_set([1]), None, 4, gen())) == []
    empty_memory = make_set([3, 3]).subset([])
    assert [len(x) for x, _ in half_and_half_batches(new, empty_memory, 5, gen())] == [5, 5]


@pytest.mark.parametrize("batch_size", [8, 9])
def test_with_memory_exact_halves_and_one_pass(batch_size: int) -> None:
    new = make_set([10, 13])  # 23 new samples, labels 0..1
    memory = make_set([0, 0, 3, 4])  # 7 memory samples, labels 2..3
    half = batch_size // 2
    mem_part = batch_size - half
    batches = list(half_and_half_batches(new, memory, batch_size, gen()))
    sizes = [min(half, 23 - s) for s in range(0, 23, half)]
    assert len(batches) == len(sizes)
    new_ids, mem_ids = [], []
    for (x, y), r in zip(batches, sizes, strict=True):
        is_mem = y >= 2  # memory classes are disjoint from the new ones here
        n_new = int((~is_mem).sum())
        assert n_new == r
        assert int(is_mem.sum()) == r + (mem_part - half)  # half and half, exactly
        assert not is_mem[:r].any() and is_mem[r:].all()  # new first, then memory
        new_ids += sample_ids(x[:r]).tolist()
        mem_ids += sample_ids(x[r:]).tolist()
        assert torch.equal(y[:r], new.labels[sample_ids(x[:r])])
        assert torch.equal(y[r:], memory.labels[sample_ids(x[r:])])
    assert sorted(new_ids) == list(range(23))  # every new sample exactly once
    use = torch.bincount(torch.tensor(mem_ids), minlength=7)
    assert int(use.max() - use.min()) <= 1  # memory used evenly
    # A full shuffled cycle over the memory before any sample repeats.
    for start in range(0, len(mem_ids) - 6, 7):
        assert sorted(mem_ids[start : start + 7]) == list(range(7))


def test_reproducible_and_seed_dependent() -> None:
    new, memory = make_set([9, 9]), make_set([0, 0, 5])

    def run(seed: int) -> list[list[int]]:
        return [sample_ids(x).tolist() for x, _ in half_and_half_batches(new, memory, 6, gen(seed))]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_refuses_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        list(half_and_half_batches(make_set([2, 2]), None, 1, gen()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_memory_follows_gpu_data_and_cpu_seed_reproduces() -> None:
    new, memory = make_set([9, 9]), make_set([0, 0, 5])
    cpu = [sample_ids(x).tolist() for x, _ in half_and_half_batches(new, memory, 6, gen(2))]
    gpu_batches = list(half_and_half_batches(new.to("cuda"), memory, 6, gen(2)))
    assert all(x.is_cuda and y.is_cuda for x, y in gpu_batches)
    assert [sample_ids(x.cpu()).tolist() for x, _ in gpu_batches] == cpu


# --------------------------------------------------------------------------- the released sampler


def released_batches_per_epoch(n_new: int, n_memory: int, batch_size: int) -> int:
    """The released rule, written from dataset_utils.BalancedBatchSampler and main.py: later
    tasks ``n_samples // batch_size`` (n_samples = new + memory), at least 1; the first task a
    DataLoader with drop_last=True over the new images, at least 1 (src shrinks the batch)."""
    if n_memory == 0:
        return max(1, n_new // batch_size)
    n_batches = (n_new + n_memory) // batch_size
    return n_batches if n_batches > 0 else 1


@pytest.mark.parametrize(
    ("n_new", "n_mem", "bs"),
    [
        (7500, 200, 128),
        (5000, 0, 128),
        (1500, 200, 128),
        (1500, 800, 128),
        (60, 40, 128),
        (10, 0, 4),
        (13, 7, 6),
        (127, 0, 128),
        (128, 0, 128),
    ],
)
def test_balanced_steps_per_epoch_is_the_released_rule(n_new, n_mem, bs) -> None:
    assert steps_per_epoch(n_new, n_mem, bs, "balanced") == released_batches_per_epoch(
        n_new, n_mem, bs
    )


def test_shuffle_steps_per_epoch_counts_what_the_sampler_yields() -> None:
    for counts, mem, bs in (([7, 6], None, 5), ([6, 5], None, 5), ([10, 13], [0, 0, 3, 4], 8)):
        new = make_set(counts)
        memory = make_set(mem) if mem else None
        got = len(list(half_and_half_batches(new, memory, bs, gen())))
        assert steps_per_epoch(len(new), len(memory) if memory else 0, bs, "shuffle") == got
    assert steps_per_epoch(7500, 200, 128) == 118  # ceil(7500 / 64): each new image once
    with pytest.raises(ValueError, match="unknown sampler"):
        steps_per_epoch(10, 0, 4, "fancy")


def test_balanced_with_memory_half_and_half_independent_draws() -> None:
    new = make_set([40, 43])  # 83 new images, labels 0..1
    memory = make_set([0, 0, 9, 8])  # 17 memory images, labels 2..3
    batches = list(epoch_batches(new, memory, 10, gen(), "balanced"))
    assert len(batches) == (83 + 17) // 10 == steps_per_epoch(83, 17, 10, "balanced")
    counts_new = torch.zeros(83, dtype=torch.long)
    for x, y in batches:
        assert len(y) == 10
        is_mem = y >= 2
        assert not is_mem[:5].any() and is_mem[5:].all()  # 5 new first, then 5 from memory
        ids_new, ids_mem = sample_ids(x[:5]), sample_ids(x[5:])
        assert torch.equal(y[:5], new.labels[ids_new]) and torch.equal(
            y[5:], memory.labels[ids_mem]
        )
        assert (
            len(set(ids_new.tolist())) == 5 and len(set(ids_mem.tolist())) == 5
        )  # no repeat in a batch
        counts_new[ids_new] += 1
    # Independent draws: across the epoch some new images repeat and some are never drawn.
    assert int(counts_new.max()) > 1 and int((counts_new == 0).sum()) > 0


def test_balanced_draws_with_repeats_when_a_pool_is_not_larger_than_the_half() -> None:
    new = make_set([30, 30])
    memory = make_set([0, 0, 2, 2])  # 4 memory images for halves of 5: drawn with repeats
    for _, y in balanced_batches(new, memory, 10, gen(1)):
        assert len(y) == 10 and int((y >= 2).sum()) == 5
    tiny_new, tiny_mem = make_set([3, 2]), make_set([0, 0, 1, 2])  # 5 + 3 < 10: one batch
    (only,) = list(balanced_batches(tiny_new, tiny_mem, 10, gen()))
    assert len(only[1]) == 2 * ((5 + 3) // 2)


def test_balanced_first_task_is_a_shuffle_that_drops_the_last_partial_batch() -> None:
    new = make_set([12, 11])  # 23 images, batches of 5: four full ones, 3 left out
    batches = list(epoch_batches(new, None, 5, gen(), "balanced"))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5]
    ids = torch.cat([sample_ids(x) for x, _ in batches])
    assert len(set(ids.tolist())) == 20  # without repeats
    assert len(batches) == steps_per_epoch(23, 0, 5, "balanced")
    (small,) = list(balanced_batches(make_set([2, 1]), None, 5, gen()))  # smaller than a batch
    assert len(small[1]) == 3


def test_balanced_reproducible_and_seed_dependent() -> None:
    new, memory = make_set([20, 20]), make_set([0, 0, 6, 6])

    def run(seed: int) -> list[list[int]]:
        return [sample_ids(x).tolist() for x, _ in balanced_batches(new, memory, 8, gen(seed))]

    assert run(5) == run(5) and run(5) != run(6)
