"""BCT / BCT-ER (Shen et al. 2020, Eq. 3): the influence loss against a per-sample loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from compatkit.methods import StepInputs, TaskContext, build_method
from compatkit.model import ModelSpec, build_model


def _model(classes, provider=(), feat_dim=6, seed=0):
    torch.manual_seed(seed)
    m = build_model(ModelSpec("smallcnn", 1, feat_dim, "learnable", 2))
    if provider:
        m.add_classes(provider, space="provider")
    m.add_classes(classes)
    with torch.no_grad():  # spread the rows (init std 0.01 makes every softmax nearly uniform)
        m.head.w.normal_(0.0, 3.0)
    return m


def _frozen(m):
    m.eval()
    m.requires_grad_(False)
    return m


def _ce_loop(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], written out."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def _run(method, model, old_model, labels, old_classes, new_classes=(3, 4), memory_labels=None):
    ctx = TaskContext(
        model, old_model, 1, list(new_classes), old_classes, memory_labels=memory_labels
    )
    method.begin_task(ctx)
    return _batch(method, model, old_model, labels)


def _batch(method, model, old_model, labels):
    x = torch.rand(len(labels), 1, 12, 12)
    model.eval()
    out = model(x)
    with torch.no_grad():
        old = old_model(x) if old_model is not None else None
    step = StepInputs(out, old, labels, model.targets(labels))
    loss, parts = method.loss(step)
    return step, loss, parts


def test_declarations():
    bct, bct_er = type(build_method("bct")), type(build_method("bct-er"))
    assert (bct.head, bct.needs_old, bct.old_rule, bct.uses_memory) == (
        "learnable",
        True,
        "previous",
        False,
    )
    assert (bct_er.head, bct_er.old_rule, bct_er.uses_memory) == ("learnable", "previous", True)
    with pytest.raises(ValueError, match="new_classes"):
        build_method("bct", {"new_classes": "drop"})
    with pytest.raises(ValueError, match="lam"):
        build_method("bct-er", {"lam": -1.0})


def test_skip_influence_matches_loop_on_known_classes():
    # Old head: provider rows first, local classes learned in another order -> other rows.
    old_model = _frozen(_model([2, 0, 1], provider=[5, 6, 7], seed=1))
    model = _model([0, 1, 2, 3, 4])
    labels = torch.tensor([0, 3, 2, 2, 4, 1, 3, 0])
    method = build_method("bct-er", {"lam": 0.5, "new_classes": "skip"})
    step, loss, parts = _run(method, model, old_model, labels, [0, 1, 2])

    w_old = old_model.head.weight.tolist()
    terms = []
    for i, y in enumerate(labels.tolist()):
        if y not in (0, 1, 2):
            continue
        f = step.out.features[i].tolist()
        logits = [sum(a * b for a, b in zip(f, w, strict=True)) for w in w_old]
        terms.append(_ce_loop(logits, old_model.class_map.local[y]))
    infl = sum(terms) / len(terms)
    ce = F.cross_entropy(step.out.logits, step.targets).item()
    assert parts["influence"].item() == pytest.approx(infl, rel=1e-5)
    assert loss.item() == pytest.approx(ce + 0.5 * infl, rel=1e-5)

    loss.backward()  # reaches the new features, never the frozen old head
    assert model.junction.weight.grad.abs().sum() > 0
    assert old_model.head.weight.grad is None


@pytest.mark.parametrize("provider_old", [False, True])
def test_skip_influence_is_zero_without_known_samples(provider_old):
    old_model = _frozen(_model([], provider=[0, 1]) if provider_old else _model([0, 1, 2]))
    old_classes = [] if provider_old else [0, 1, 2]
    model = _model([0, 1, 2, 3, 4])
    labels = torch.tensor([3, 4, 4, 3])  # only new classes: no memory (plain ``bct``)
    method = build_method("bct", {"new_classes": "skip"})
    step, loss, parts = _run(method, model, old_model, labels, old_classes)
    assert parts["influence"].item() == 0.0
    assert loss.item() == pytest.approx(F.cross_entropy(step.out.logits, step.targets).item())
    loss.backward()
    assert torch.isfinite(model.junction.weight.grad).all()


def test_synthesised_rows_are_running_means_of_old_features_and_match_loop():
    old_model = _frozen(_model([0, 1, 2], provider=[9], seed=3))
    model = _model([0, 1, 2, 3, 4, 5])
    method = build_method("bct")  # default: synthesise rows for classes the old model lacks
    # Task classes 3, 4, 5; class 5 never appears, so its row must stay out of the softmax.
    b1 = torch.tensor([3, 0, 3, 4, 1])
    b2 = torch.tensor([4, 4, 2, 3, 0, 0])
    step1, _, _ = _run(method, model, old_model, b1, [0, 1, 2], new_classes=(3, 4, 5))
    step2, loss, parts = _batch(method, model, old_model, b2)

    old_feats = torch.cat([step1.old.features, step2.old.features])
    labs = torch.cat([b1, b2])
    synth = {c: old_feats[labs == c].mean(0) for c in (3, 4)}  # seen so far, both batches
    w_old = old_model.head.weight
    terms = []
    for i, y in enumerate(b2.tolist()):
        f = step2.out.features[i].detach()
        logits = [float(f @ w) for w in w_old] + [float(f @ synth[c]) for c in (3, 4)]
        target = old_model.class_map.local[y] if y in (0, 1, 2) else len(w_old) + (y - 3)
        terms.append(_ce_loop(logits, target))
    assert parts["influence"].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    loss.backward()
    assert torch.isfinite(model.junction.weight.grad).all()


def test_synthesise_with_a_provider_old_model_uses_synthesised_rows_for_all():
    old_model = _frozen(_model([], provider=[0, 1, 2], seed=4))
    model = _model([0, 1])
    labels = torch.tensor([0, 1, 1, 0])
    method = build_method("bct")
    step, loss, parts = _run(method, model, old_model, labels, [], new_classes=(0, 1))
    w_old = old_model.head.weight
    synth = {c: step.old.features[labels == c].mean(0) for c in (0, 1)}
    terms = []
    for i, y in enumerate(labels.tolist()):
        f = step.out.features[i].detach()
        logits = [float(f @ w) for w in w_old] + [float(f @ synth[c]) for c in (0, 1)]
        terms.append(_ce_loop(logits, len(w_old) + y))
    assert parts["influence"].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert torch.isfinite(loss)


def test_memory_classes_unknown_to_the_old_model_get_rows_and_strangers_are_refused():
    old_model = _frozen(_model([0], seed=5))
    model = _model([0, 1, 3])
    method = build_method("bct-er")
    # Class 1 is in memory but the old model never learned it: it gets a synthesised row.
    _, loss, _ = _run(
        method,
        model,
        old_model,
        torch.tensor([0, 1, 3]),
        [0],
        new_classes=(3,),
        memory_labels=torch.tensor([0, 1]),
    )
    assert torch.isfinite(loss)
    model.add_classes([7])
    with pytest.raises(ValueError, match=r"labels \[7\]"):
        _batch(method, model, old_model, torch.tensor([0, 7]))


def test_no_old_model_is_plain_ce():
    model = _model([0, 1])
    method = build_method("bct")
    step, loss, parts = _run(method, model, None, torch.tensor([0, 1, 1]), [], new_classes=(0, 1))
    assert set(parts) == {"ce"}
    assert loss.item() == pytest.approx(F.cross_entropy(step.out.logits, step.targets).item())


def test_feature_size_mismatch_is_refused():
    old_model = _frozen(_model([0], feat_dim=5))
    model = _model([0, 3])
    method = build_method("bct")
    with pytest.raises(ValueError, match="one feature size"):
        ctx = TaskContext(model, old_model, 1, [3], [0])
        method.begin_task(ctx)
        x = torch.rand(2, 1, 12, 12)
        out, old = model(x), old_model(x)
        method.loss(StepInputs(out, old, torch.tensor([0, 3]), model.targets(torch.tensor([0, 3]))))
