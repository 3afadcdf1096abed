"""LwF (Li & Hoiem 2017, Eq. 2): the KD term against an explicit per-sample, per-class loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from compatkit.methods import StepInputs, TaskContext, build_method
from compatkit.methods.lwf import kd_loss
from compatkit.model import ModelSpec, build_model


def _model(classes, provider=()):
    torch.manual_seed(len(classes) + 10 * len(provider))
    m = build_model(ModelSpec("smallcnn", 1, 6, "learnable", 2))
    if provider:
        m.add_classes(provider, space="provider")
    m.add_classes(classes)
    with torch.no_grad():  # spread the rows (init std 0.01 makes every softmax nearly uniform)
        m.head.w.normal_(0.0, 3.0)
    return m


def _kd_loop(new_logits, old_logits, t):
    """-1/B sum_i sum_c p_old(i, c) log q_new(i, c), softmaxes written out by hand."""
    total = 0.0
    for i in range(new_logits.shape[0]):
        eo = [math.exp(v / t) for v in old_logits[i].tolist()]
        en = [math.exp(v / t) for v in new_logits[i].tolist()]
        for c in range(len(eo)):
            total -= eo[c] / sum(eo) * math.log(en[c] / sum(en))
    return total / new_logits.shape[0]


@pytest.mark.parametrize("t", [1.0, 2.0, 5.0])
def test_kd_loss_matches_loop(t):
    g = torch.Generator().manual_seed(0)
    new, old = torch.randn(7, 4, generator=g) * 3, torch.randn(7, 4, generator=g) * 3
    assert kd_loss(new, old, t).item() == pytest.approx(_kd_loop(new, old, t), rel=1e-5)


def test_kd_is_teacher_entropy_when_equal_and_minimal_there():
    old = torch.randn(5, 3)
    p = F.softmax(old / 2, dim=1)
    ent = -(p * p.log()).sum(1).mean()
    assert kd_loss(old.clone(), old, 2.0).item() == pytest.approx(ent.item(), rel=1e-5)
    assert kd_loss(old + torch.randn(5, 3), old, 2.0) > ent


def _step(method, model, old_model, labels, old_classes):
    ctx = TaskContext(model, old_model, 1, [3, 4], old_classes)
    method.begin_task(ctx)
    x = torch.rand(len(labels), 1, 12, 12)
    model.eval()  # deterministic BN so that the loop below sees the same outputs
    out = model(x)
    with torch.no_grad():
        old = old_model(x) if old_model is not None else None
    return StepInputs(out, old, labels, model.targets(labels)), out, old


def test_lwf_loss_picks_each_models_rows_and_matches_loop():
    # The old model learned its classes in another order and also has provider rows, so its
    # rows for classes 0..2 differ from the new model's and its head has another row count.
    old_model = _model([2, 0, 1], provider=[7, 8, 9])
    model = _model([0, 1, 2, 3, 4])
    assert old_model.head.num_rows != model.head.num_rows
    labels = torch.tensor([0, 3, 3, 1, 4, 2, 0, 4])
    method = build_method("lwf", {"temperature": 2.0, "alpha": 0.7})
    step, out, old = _step(method, model, old_model, labels, [0, 1, 2])
    loss, parts = method.loss(step)

    new_cols = [model.class_map.local[c] for c in (0, 1, 2)]
    old_cols = [old_model.class_map.local[c] for c in (0, 1, 2)]
    assert new_cols != old_cols
    kd = _kd_loop(out.logits[:, new_cols].detach(), old.logits[:, old_cols], 2.0)
    ce = F.cross_entropy(out.logits, step.targets).item()
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert loss.item() == pytest.approx(ce + 0.7 * kd, rel=1e-5)
    loss.backward()
    assert model.junction.weight.grad.abs().sum() > 0


def test_lwf_without_known_classes_is_plain_ce():
    provider_old = _model([], provider=[0, 1, 2])  # pre-trained elsewhere: no local class
    model = _model([0, 1, 2, 3, 4])
    labels = torch.tensor([3, 4, 3, 0])
    method = build_method("lwf")
    step, out, _ = _step(method, model, provider_old, labels, [])
    loss, parts = method.loss(step)
    assert "kd" not in parts
    assert loss.item() == pytest.approx(F.cross_entropy(out.logits, step.targets).item())


def test_lwf_single_known_class_gives_zero_kd():
    old_model, model = _model([0]), _model([0, 3, 4])
    method = build_method("lwf")
    step, _, _ = _step(method, model, old_model, torch.tensor([0, 3, 4, 3]), [0])
    _, parts = method.loss(step)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-7)


def test_lwf_refuses_a_new_model_that_lost_an_old_class():
    method = build_method("lwf")
    ctx = TaskContext(_model([3, 4]), _model([0, 1]), 1, [3, 4], [0, 1])
    with pytest.raises(ValueError, match="must keep every earlier class"):
        method.begin_task(ctx)


def test_lwf_declaration_and_config_checks():
    cls = type(build_method("lwf"))
    assert (cls.head, cls.needs_old) == ("learnable", True)
    with pytest.raises(ValueError, match="temperature"):
        build_method("lwf", {"temperature": 0})
    with pytest.raises(ValueError, match="alpha"):
        build_method("lwf", {"alpha": -1})
