"""Half-and-half sampler: exact halves, one pass over new data, even memory use."""

from __future__ import annotations

import pytest
import torch

from compatkit.data import half_and_half_batches

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
