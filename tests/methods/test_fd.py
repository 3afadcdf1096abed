"""FD / d-Simplex-FD (CL2R feature distillation): distances and masking against loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from compatkit.methods import StepInputs, TaskContext, build_method
from compatkit.methods.fd import feature_distance
from compatkit.model import ModelSpec, build_model


def _unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def _dist_loop(new, old, distance):
    out = []
    for a, b in zip(new.tolist(), old.tolist(), strict=True):
        a, b = _unit(a), _unit(b)
        if distance == "cosine":
            out.append(1.0 - sum(x * y for x, y in zip(a, b, strict=True)))
        else:
            out.append(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
    return out


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_feature_distance_matches_loop(distance):
    g = torch.Generator().manual_seed(1)
    new, old = torch.randn(6, 5, generator=g) * 4, torch.randn(6, 5, generator=g)
    got = feature_distance(new, old, distance).tolist()
    assert got == pytest.approx(_dist_loop(new, old, distance), rel=1e-5, abs=1e-6)


def test_l2_is_twice_cosine_and_scale_free():
    new, old = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(
        feature_distance(new, old, "l2"), 2 * feature_distance(new, old, "cosine")
    )
    torch.testing.assert_close(
        feature_distance(new * 7, old, "cosine"), feature_distance(new, old, "cosine")
    )


def test_feature_distance_checks():
    with pytest.raises(ValueError, match="distance"):
        feature_distance(torch.randn(2, 3), torch.randn(2, 3), "l1")
    with pytest.raises(ValueError, match="feature dimension differs"):
        feature_distance(torch.randn(2, 3), torch.randn(2, 4))


def _models(head, old_local, old_provider=()):
    k, d = 8, 7
    torch.manual_seed(0)
    model = build_model(ModelSpec("smallcnn", 1, d, head, k))
    model.add_classes([0, 1, 2, 3, 4])
    old = build_model(ModelSpec("smallcnn", 1, d, head, k))
    if old_provider:
        old.add_classes(old_provider, space="provider")
    old.add_classes(old_local)
    old.eval()
    old.requires_grad_(False)
    return model, old


def _step(method, model, old_model, labels, old_classes):
    method.begin_task(TaskContext(model, old_model, 1, [3, 4], old_classes))
    x = torch.rand(len(labels), 1, 12, 12)
    model.eval()
    out = model(x)
    with torch.no_grad():
        old = old_model(x)
    return StepInputs(out, old, labels, model.targets(labels))


@pytest.mark.parametrize("name", ["fd", "dsimplex-fd"])
@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("only_memory", [True, False])
def test_fd_loss_matches_loop(name, distance, only_memory):
    head = "simplex" if name == "dsimplex-fd" else "learnable"
    model, old_model = _models(head, [0, 1, 2])
    labels = torch.tensor([3, 0, 4, 2, 3, 0, 4, 4])
    method = build_method(name, {"distance": distance, "lam": 0.3, "only_memory": only_memory})
    step = _step(method, model, old_model, labels, [0, 1, 2])
    loss, parts = method.loss(step)
    d = _dist_loop(step.out.features.detach(), step.old.features, distance)
    keep = [i for i, y in enumerate(labels.tolist()) if y in (0, 1, 2) or not only_memory]
    fd = sum(d[i] for i in keep) / len(keep)
    ce = F.cross_entropy(step.out.logits, step.targets).item()
    assert parts["fd"].item() == pytest.approx(fd, rel=1e-5)
    assert loss.item() == pytest.approx(ce + 0.3 * fd, rel=1e-5)
    loss.backward()
    assert model.junction.weight.grad.abs().sum() > 0


def test_only_memory_without_memory_samples_is_zero():
    model, old_model = _models("learnable", [0, 1, 2])
    method = build_method("fd")
    step = _step(method, model, old_model, torch.tensor([3, 4, 4]), [0, 1, 2])
    _, parts = method.loss(step)
    assert parts["fd"].item() == 0.0


def test_old_model_without_local_classes_distils_every_sample():
    # Task 0 or a replacement under the reference rule: the old model is a provider.
    model, old_model = _models("simplex", [], old_provider=[0, 1])
    labels = torch.tensor([0, 1, 1, 2])
    method = build_method("dsimplex-fd")
    step = _step(method, model, old_model, labels, [])
    _, parts = method.loss(step)
    d = _dist_loop(step.out.features.detach(), step.old.features, "cosine")
    assert parts["fd"].item() == pytest.approx(sum(d) / len(d), rel=1e-5)


def test_declarations_and_config():
    fd, dfd = type(build_method("fd")), type(build_method("dsimplex-fd"))
    assert (fd.head, dfd.head) == ("learnable", "simplex")
    assert fd.needs_old and dfd.needs_old and fd.uses_memory
    with pytest.raises(ValueError, match="distance"):
        build_method("fd", {"distance": "l1"})
    with pytest.raises(ValueError, match="lam"):
        build_method("dsimplex-fd", {"lam": -0.1})
