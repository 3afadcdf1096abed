"""ETF and ETF-HOC: a fixed simplex-ETF head with cross-entropy, and with Eq. 3 of the paper."""

from __future__ import annotations

import math

import pytest
import torch

from compatkit.heads import etf_matrix
from compatkit.losses import hoc_total_loss
from compatkit.methods import StepInputs, build_method
from compatkit.model import ModelSpec, build_model


def _model(seed=0):
    torch.manual_seed(seed)
    m = build_model(ModelSpec("smallcnn", 1, 9, "etf", 6, etf_seed=3))
    m.add_classes([0, 1, 2, 3])
    return m


def test_declarations():
    etf, etf_hoc = type(build_method("etf")), type(build_method("etf-hoc"))
    assert (etf.head, etf.needs_old) == ("etf", False)
    assert (etf_hoc.head, etf_hoc.needs_old) == ("etf", True)
    cfg = build_method("etf-hoc").cfg
    assert (cfg.lam, cfg.mu, cfg.form) == (0.1, 10.0, "textbook")
    with pytest.raises(ValueError, match="form"):
        build_method("etf-hoc", {"form": "other"})


def test_etf_is_plain_ce_through_the_fixed_frame():
    model = _model()
    labels = torch.tensor([0, 3, 3, 1, 2])
    out = model(torch.rand(5, 1, 12, 12))
    loss, parts = build_method("etf").loss(StepInputs(out, None, labels, model.targets(labels)))
    frame = etf_matrix(6, 9, seed=3).tolist()  # rebuilt independently: the frame is fixed
    total = 0.0
    for f, r in zip(out.features.tolist(), model.targets(labels).tolist(), strict=True):
        logits = [sum(a * b for a, b in zip(f, w, strict=True)) for w in frame]
        total += -logits[r] + math.log(sum(math.exp(z) for z in logits))
    assert loss.item() == pytest.approx(total / len(labels), rel=1e-5)
    assert set(parts) == {"ce"}


@pytest.mark.parametrize("form", ["textbook", "reference"])
def test_etf_hoc_equals_hoc_total_loss_on_etf_logits(form):
    model, old_model = _model(0), _model(1).eval()
    labels = torch.tensor([0, 3, 3, 1, 2, 0])
    x = torch.rand(6, 1, 12, 12)
    out = model(x)
    with torch.no_grad():
        old = old_model(x)
    method = build_method("etf-hoc", {"lam": 0.3, "mu": 5.0, "form": form})
    targets = model.targets(labels)
    loss, parts = method.loss(StepInputs(out, old, labels, targets))
    exp, exp_parts = hoc_total_loss(
        out.features @ etf_matrix(6, 9, 3).t(),
        targets,
        out.features,
        labels,
        old.features,
        0.3,
        5.0,
        form,
    )
    assert loss.item() == pytest.approx(exp.item(), rel=1e-6)
    assert parts.keys() == exp_parts.keys() == {"ce", "hoc"}
    loss.backward()
    assert model.junction.weight.grad.abs().sum() > 0
