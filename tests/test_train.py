"""One task's loop: the steps it takes, the learning rate of each step, the decay groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from compatkit.config import OptimConfig
from compatkit.data import ImageSet, steps_per_epoch
from compatkit.methods import TaskContext, build_method
from compatkit.model import ModelSpec, build_model
from compatkit.protocol.trainer import make_optimizer, train_task
from compatkit.runtime.device import Precision, Runtime


def _data(counts: list[int], first_label: int = 0, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), first_label + k) for k, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), 1, 12, 12), dtype=torch.uint8, generator=g)
    return ImageSet(images, labels.long(), [f"c{k}" for k in range(first_label + len(counts))])


def _run(opt: OptimConfig, new: ImageSet, memory: ImageSet | None) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8))
    model.add_classes(
        sorted(set(new.labels.tolist()) | set(memory.labels.tolist() if memory else []))
    )
    ctx = TaskContext(model, None, 1, [], [], normalize=lambda x: x.float() / 255)
    steps: list[dict] = []
    train_task(
        model, build_method("cores"), ctx, new, memory, opt,
        Runtime(torch.device("cpu"), Precision(None, False), ctx.normalize),
        torch.Generator().manual_seed(0), on_step=steps.append,
    )  # fmt: skip
    return steps


@pytest.mark.parametrize("sampler", ["shuffle", "balanced"])
def test_steps_taken_are_steps_per_epoch_times_epochs(sampler):
    new, memory = _data([21, 20]), _data([0, 0, 4, 4], first_label=0, seed=1)
    for mem in (None, memory):
        opt = OptimConfig(epochs=3, batch_size=8, pad=0, sampler=sampler)
        steps = _run(opt, new, mem)
        per_epoch = steps_per_epoch(len(new), len(mem) if mem else 0, 8, sampler)
        assert len(steps) == 3 * per_epoch == steps[-1]["total"]
        assert [s["epoch"] for s in steps] == [e for e in range(3) for _ in range(per_epoch)]


def test_lr_per_epoch_is_the_released_cosine_annealing():
    """train.lr_update=epoch: every step of epoch e runs at CosineAnnealingLR's e-th rate."""
    epochs, lr, floor = 5, 0.1, 1e-3
    opt = OptimConfig(epochs=epochs, batch_size=8, lr=lr, min_lr=floor, pad=0)
    opt.lr_update, opt.sampler = "epoch", "balanced"
    steps = _run(opt, _data([12, 12]), None)  # 24 // 8 = 3 steps per epoch
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=epochs, eta_min=floor)
    want = []
    for _ in range(epochs):
        want += [sgd.param_groups[0]["lr"]] * 3
        sgd.step()
        sched.step()
    torch.testing.assert_close(torch.tensor([s["lr"] for s in steps]), torch.tensor(want))


def test_lr_per_step_decays_every_step():
    opt = OptimConfig(epochs=2, batch_size=8, lr=0.1, min_lr=1e-3, pad=0)
    lrs = [s["lr"] for s in _run(opt, _data([12, 12]), None)]  # 3 steps per epoch, 6 in all
    assert lrs[0] == 0.1 and all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] == pytest.approx(1e-3 + 0.5 * (0.1 - 1e-3) * (1 + math.cos(math.pi * 5 / 6)))


def test_weight_decay_on_weights_or_on_everything():
    model = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8))
    trained = [p for p in model.parameters() if p.requires_grad]
    weights = make_optimizer(model, 0.1, 0.9, 5e-4)
    decayed = {id(p) for g in weights.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in trained if p.ndim >= 2}  # conv/linear weights only
    every = make_optimizer(model, 0.1, 0.9, 5e-4, decay_all=True)
    decayed = {id(p) for g in every.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in trained}  # BatchNorm weights and biases too
