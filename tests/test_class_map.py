"""The class-to-row map: local classes from the bottom, provider classes from the top, and
``keep_provider_rows`` (a class keeps one row for the life of the scenario)."""

from __future__ import annotations

import pytest
import torch

from compatkit.checkpoint import check_compatible
from compatkit.model import ModelSpec, build_model
from compatkit.simplex import ClassMap


def test_local_rows_from_the_bottom_and_shared_rows():
    cm = ClassMap(20)
    cm.add_provider(range(10))
    assert cm.add_local([1, 3]) == [18, 16]  # K-1-y: the paper's own rows
    shared = ClassMap(20)
    shared.add_provider(range(10))
    assert shared.add_local([1, 3], keep_provider_rows=True) == [1, 3]
    assert shared.rows(torch.tensor([3, 1]), "local").tolist() == [3, 1]
    # a class the provider does not know still gets its own row from the bottom
    partial = ClassMap(20)
    partial.add_provider([0, 2, 7, 9])
    assert partial.add_local([1, 2], keep_provider_rows=True) == [18, 2]


def test_shared_rows_need_no_room():
    cm = ClassMap(10)
    cm.add_provider(range(10))  # every row taken by the provider
    with pytest.raises(ValueError, match="cannot map"):
        cm.copy().add_local([1])
    assert cm.add_local([1, 8], keep_provider_rows=True) == [1, 8]


def test_learnable_head_shares_the_provider_row():
    cm = ClassMap(None)
    cm.add_provider([5, 6, 7])  # rows 0, 1, 2 in order of arrival
    assert cm.add_local([6, 9], keep_provider_rows=True) == [1, 3]
    assert cm.used_rows() == 4


def test_a_model_with_shared_rows_stays_comparable_with_its_provider():
    spec = ModelSpec("smallcnn", 1, 19, "simplex", 20)
    provider = build_model(spec)
    provider.add_classes(range(10), "provider")
    own = build_model(spec, provider.class_map.copy())
    own.add_classes([1, 3], "local")
    kept = build_model(spec, provider.class_map.copy())
    kept.add_classes([1, 3], "local", keep_provider_rows=True)
    check_compatible(provider.contract(), kept.contract())
    check_compatible(provider.contract(), own.contract())
    with pytest.raises(ValueError, match="local class 1 sits on row"):
        check_compatible(own.contract(), kept.contract())
