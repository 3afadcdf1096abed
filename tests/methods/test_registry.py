"""Every registered method, in the situations a trainer puts it in: no new test code per method.

For each method: a tiny smallcnn model with the method's head, a frozen old model when the
method needs one (one that knows some local classes, with a different row layout; one
pre-trained elsewhere that knows none; or none at all, as at task 0 from scratch), a rehearsal
memory when the method uses one, then ``begin_task`` and ``loss`` on two random batches: the
loss must be a finite scalar whose gradient is finite, reaches the new model and never the
old one.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compatkit.methods import METHODS, StepInputs, TaskContext, build_method, load_all
from compatkit.model import ModelSpec, build_model

load_all()

K, D = 8, 7  # a fixed head of K rows needs D >= K - 1 (simplex: D = K - 1 exactly)
SCENARIOS = ("old_knows_some", "old_from_elsewhere", "no_old")


def _cases():
    for name in sorted(METHODS):
        for scenario in SCENARIOS if METHODS[name].needs_old else ("no_old",):
            yield pytest.param(name, scenario, id=f"{name}-{scenario}")


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255


def _old_model(head: str, scenario: str):
    old = build_model(ModelSpec("smallcnn", 1, D, head, K))
    old.add_classes([0], space="provider")  # a provider row: the two heads' layouts differ
    if scenario == "old_knows_some":
        old.add_classes([2, 0, 1])
    old.eval()
    old.requires_grad_(False)
    return old


@pytest.mark.parametrize(("name", "scenario"), list(_cases()))
def test_method_trains_in_every_situation(name, scenario):
    cls = METHODS[name]
    torch.manual_seed(0)
    model = build_model(ModelSpec("smallcnn", 1, D, cls.head, K))
    if scenario == "no_old":  # task 0 from scratch: nothing old, nothing in memory
        task, new, old_classes = 0, [0, 1, 2], []
        old_model = None
    else:  # a later task; the old model knows classes 0-2, or none when it was trained elsewhere
        task, new = 1, [3, 4]
        old_model = _old_model(cls.head, scenario)
        old_classes = sorted(old_model.class_map.local)
    seen = sorted({*new, *([0, 1, 2] if task else [])})
    model.add_classes(seen)
    use_memory = cls.uses_memory and task > 0
    mem_x = mem_y = None
    if use_memory:
        mem_y = torch.tensor([0, 0, 1, 1, 2, 2])
        mem_x = torch.randint(0, 256, (len(mem_y), 1, 12, 12), dtype=torch.uint8)

    method = build_method(name)
    ctx = TaskContext(model, old_model, task, new, old_classes, mem_x, mem_y, normalize=_normalize)
    method.begin_task(ctx)
    model.train()
    pool = torch.tensor(seen if use_memory else new)
    for step_no in range(2):
        labels = pool[torch.randint(0, len(pool), (10,))]
        labels[:2] = pool[:2]  # at least two classes, with repeats
        x = _normalize(torch.randint(0, 256, (10, 1, 12, 12), dtype=torch.uint8))
        out = model(x)
        with torch.no_grad():
            old = old_model(x) if old_model is not None else None
        loss, parts = method.loss(StepInputs(out, old, labels, model.targets(labels)))
        assert loss.dim() == 0 and torch.isfinite(loss), (step_no, parts)
        assert parts and all(torch.isfinite(v) and not v.requires_grad for v in parts.values())
        model.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert model.junction.weight.grad.abs().sum() > 0
        if old_model is not None:
            assert all(p.grad is None for p in old_model.parameters())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_declaration(name):
    cls = METHODS[name]
    assert cls.name == name
    assert cls.head in ("simplex", "etf", "learnable")
    assert cls.old_rule in (None, "previous")
    assert cls.paper, "every method cites its paper"
    assert cls.__module__ and __import__(cls.__module__, fromlist=["_"]).__doc__, "module doc"
    assert dataclasses.is_dataclass(cls.Config)
    cls.Config()  # every option has a default
    with pytest.raises(ValueError, match="no option"):
        build_method(name, {"no_such_option": 1})
