"""CVS (Wan et al., CVPR 2022): normalised softmax, hardest-negative triplet and old centres."""

from __future__ import annotations

import math

import pytest
import torch

from compatkit.methods import StepInputs, TaskContext, build_method
from compatkit.methods.cvs import centre_loss, hardest_negative_triplet, normalized_softmax_ce
from compatkit.model import ModelSpec, build_model


def _unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def _cos(a, b):
    return sum(x * y for x, y in zip(_unit(a), _unit(b), strict=True))


def _triplet_loop(new, old, labels, margin):
    """For each anchor, scan the batch by hand for the closest old feature of another class."""
    new, old, labels = new.tolist(), old.tolist(), labels.tolist()
    terms = []
    for i in range(len(labels)):
        best = None
        for j in range(len(labels)):
            if labels[j] != labels[i]:
                d = 1.0 - _cos(new[i], old[j])
                best = d if best is None or d < best else best
        if best is None:
            continue  # no negative: left out of the mean
        terms.append(max(0.0, (1.0 - _cos(new[i], old[i])) - best + margin))
    return sum(terms) / len(terms) if terms else 0.0


def _ns_loop(features, weight, targets, scale):
    total = 0.0
    for f, t in zip(features.tolist(), targets.tolist(), strict=True):
        logits = [scale * _cos(f, w) for w in weight.tolist()]
        total += -logits[t] + math.log(sum(math.exp(v) for v in logits))
    return total / len(targets)


def _centre_loop(new, labels, centres: dict):
    terms = [
        1.0 - _cos(f, centres[y])
        for f, y in zip(new.tolist(), labels.tolist(), strict=True)
        if y in centres
    ]
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("margin", [0.0, 0.2, 1.5])
def test_triplet_matches_hand_picked_hardest_negative(margin):
    g = torch.Generator().manual_seed(2)
    new, old = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 2, 1, 0])
    got = hardest_negative_triplet(new, old, labels, margin).item()
    assert got == pytest.approx(_triplet_loop(new, old, labels, margin), rel=1e-5, abs=1e-7)


def test_triplet_one_class_batch_is_zero_with_finite_grad():
    new = torch.randn(4, 3, requires_grad=True)
    loss = hardest_negative_triplet(new, torch.randn(4, 3), torch.tensor([5, 5, 5, 5]), 0.2)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(new.grad).all()


def test_normalized_softmax_matches_loop_and_ignores_norms():
    g = torch.Generator().manual_seed(3)
    f, w = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g)
    t = torch.tensor([0, 3, 3, 1, 2, 0])
    got = normalized_softmax_ce(f, w, t, 16.0).item()
    assert got == pytest.approx(_ns_loop(f, w, t, 16.0), rel=1e-5)
    assert normalized_softmax_ce(f * 9, w * 0.1, t, 16.0).item() == pytest.approx(got, rel=1e-5)


def test_centre_loss_matches_loop():
    g = torch.Generator().manual_seed(4)
    new = torch.randn(7, 3, generator=g)
    centres = torch.nn.functional.normalize(torch.randn(2, 3, generator=g), dim=1)
    lut = torch.tensor([-1, 1, -1, 0])  # class 1 -> centre 1, class 3 -> centre 0
    labels = torch.tensor([1, 3, 0, 3, 9, 1, 2])  # 9 is past the table: no centre
    got = centre_loss(new, labels, lut, centres).item()
    exp = _centre_loop(new, labels, {1: centres[1].tolist(), 3: centres[0].tolist()})
    assert got == pytest.approx(exp, rel=1e-5)
    assert centre_loss(new, torch.tensor([0, 2, 0, 2, 0, 2, 0]), lut, centres).item() == 0.0


def _models(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelSpec("smallcnn", 1, 6, "learnable", 2))
    model.add_classes([0, 1, 2, 3, 4])
    old = build_model(ModelSpec("smallcnn", 1, 6, "learnable", 2))
    old.add_classes([0, 1, 2])
    old.eval()
    old.requires_grad_(False)
    return model, old


def _normalize(x):
    return x.float() / 255


def test_begin_task_centres_and_full_loss_match_loops():
    model, old_model = _models()
    g = torch.Generator().manual_seed(5)
    mem_x = torch.randint(0, 256, (7, 1, 12, 12), dtype=torch.uint8, generator=g)
    mem_y = torch.tensor([2, 0, 2, 0, 2, 1, 0])
    method = build_method("cvs", {"scale": 10.0, "margin": 0.3, "w_triplet": 0.5, "w_centre": 2})
    ctx = TaskContext(model, old_model, 1, [3, 4], [0, 1, 2], mem_x, mem_y, normalize=_normalize)
    method.begin_task(ctx)

    # Centres by hand: one image at a time through the old model (eval-mode BN).
    centres = {}
    for c in (0, 1, 2):
        feats = [
            _unit(old_model(_normalize(mem_x[i : i + 1])).features[0].tolist())
            for i in range(len(mem_y))
            if int(mem_y[i]) == c
        ]
        centres[c] = _unit([sum(col) / len(feats) for col in zip(*feats, strict=True)])
    for c, v in centres.items():
        row = method.centres[method.centre_lut[c]].tolist()
        assert row == pytest.approx(v, rel=1e-4, abs=1e-6)

    labels = torch.tensor([3, 0, 4, 2, 3, 0, 4, 1])
    x = torch.rand(len(labels), 1, 12, 12)
    model.eval()
    out = model(x)
    with torch.no_grad():
        old = old_model(x)
    step = StepInputs(out, old, labels, model.targets(labels))
    loss, parts = method.loss(step)
    f = out.features.detach()
    ns = _ns_loop(f, model.head.weight.detach(), step.targets, 10.0)
    tri = _triplet_loop(f, old.features, labels, 0.3)
    cen = _centre_loop(f, labels, centres)
    assert parts["ns_ce"].item() == pytest.approx(ns, rel=1e-5)
    assert parts["triplet"].item() == pytest.approx(tri, rel=1e-5, abs=1e-7)
    assert parts["centre"].item() == pytest.approx(cen, rel=1e-4)
    assert loss.item() == pytest.approx(ns + 0.5 * tri + 2 * cen, rel=1e-4)
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0  # the normalised softmax trains the head
    assert model.junction.weight.grad.abs().sum() > 0


def test_without_memory_or_old_model_terms_drop_out():
    model, old_model = _models(1)
    labels = torch.tensor([3, 4, 3])
    method = build_method("cvs")
    method.begin_task(TaskContext(model, old_model, 1, [3, 4], [0, 1, 2]))
    assert method.centres is None
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        old = old_model(x)
    _, parts = method.loss(StepInputs(model(x), old, labels, model.targets(labels)))
    assert set(parts) == {"ns_ce", "triplet"}

    method.begin_task(TaskContext(model, None, 0, [3, 4], [], normalize=_normalize))
    _, parts = method.loss(StepInputs(model(x), None, labels, model.targets(labels)))
    assert set(parts) == {"ns_ce"}


def test_declarations_and_config():
    cls = type(build_method("cvs"))
    assert (cls.head, cls.needs_old) == ("learnable", True)
    for bad in ({"scale": 0}, {"margin": -0.1}, {"w_triplet": -1}, {"w_centre": -1}):
        with pytest.raises(ValueError):
            build_method("cvs", bad)
