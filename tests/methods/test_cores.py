"""CoReS (Biondi et al., TPAMI 2023): the d-Simplex head with plain cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from compatkit.methods import StepInputs, build_method
from compatkit.model import ModelSpec, build_model
from compatkit.simplex import simplex_vertices


def test_cores_is_plain_ce_through_the_simplex_head():
    cls = type(build_method("cores"))
    assert (cls.head, cls.needs_old) == ("simplex", False)
    torch.manual_seed(0)
    model = build_model(ModelSpec("smallcnn", 1, 7, cls.head, 8))
    model.add_classes([0, 1, 2])
    labels = torch.tensor([0, 2, 2, 1, 0])
    out = model(torch.rand(5, 1, 12, 12))
    loss, parts = build_method("cores").loss(StepInputs(out, None, labels, model.targets(labels)))
    # By hand: logits are features times the fixed vertices; class y sits on row K-1-y.
    v = simplex_vertices(8).tolist()
    total = 0.0
    for f, y in zip(out.features.tolist(), labels.tolist(), strict=True):
        logits = [sum(a * b for a, b in zip(f, w, strict=True)) for w in v]
        total += -logits[7 - y] + math.log(sum(math.exp(z) for z in logits))
    assert loss.item() == pytest.approx(total / len(labels), rel=1e-5)
    assert set(parts) == {"ce"}
    loss.backward()
    assert model.junction.weight.grad.abs().sum() > 0
