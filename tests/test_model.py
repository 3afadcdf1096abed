"""CompatModel: the optional junction and the fresh learnable head of a released replacement."""

from __future__ import annotations

import pytest
import torch

from compatkit.model import ModelSpec, build_model


def _provider_er():
    m = build_model(ModelSpec("smallcnn", 1, 128, "learnable", 0, junction=False))
    m.add_classes(range(4), "provider")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1)
    return m


def test_without_junction_the_feature_is_the_backbone_output():
    m = _provider_er().eval()
    x = torch.randn(3, 1, 12, 12)
    out = m(x)
    torch.testing.assert_close(out.features, m.backbone(x))
    torch.testing.assert_close(out.logits, out.features @ m.head.weight.t())
    with pytest.raises(ValueError, match="smallcnn gives 128 dimensions, feat_dim is 64"):
        build_model(ModelSpec("smallcnn", 1, 64, "learnable", 0, junction=False))


def test_fresh_head_drops_the_provider_classifier_and_keeps_the_body():
    provider = _provider_er()
    fresh = provider.with_fresh_head()
    assert fresh.head.num_rows == 0 and not fresh.class_map.provider and not fresh.class_map.local
    for k, v in provider.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(fresh.state_dict()[k], v), k
    fresh.add_classes([0, 1, 2])  # seen local classes in order: class y -> row y
    assert fresh.class_map.local == {0: 0, 1: 1, 2: 2} and fresh.head.num_rows == 3
    fresh.add_classes([3, 4])  # a later task appends rows, old rows kept
    assert fresh.head.num_rows == 5 and fresh.class_map.local[4] == 4
    assert provider.head.num_rows == 4 and provider.class_map.provider == {0: 0, 1: 1, 2: 2, 3: 3}
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(fresh.eval().features(x), provider.eval().features(x))


def test_fresh_head_keeps_a_junction_and_refuses_fixed_heads():
    m = build_model(ModelSpec("smallcnn", 1, 16, "learnable", 8))
    m.add_classes([0, 1], "provider")
    fresh = m.with_fresh_head()
    assert torch.equal(fresh.junction.weight, m.junction.weight)
    assert fresh.contract()["junction"] is True and fresh.contract()["head_rows"] == 0
    simplex = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8))
    with pytest.raises(ValueError, match="simplex head is fixed"):
        simplex.with_fresh_head()
