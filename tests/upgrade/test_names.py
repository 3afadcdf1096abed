"""Class names in the class map and the contract: stored, optional, compared by name."""

from __future__ import annotations

import pytest

from compatkit.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from compatkit.errors import IncompatibleModels
from compatkit.model import ModelSpec, build_model
from compatkit.simplex import ClassMap

K = 8


def _contract(named_rows: dict[str, int], labels: dict[str, int] | None = None) -> dict:
    """A d-Simplex contract whose classes sit on the given rows under the given labels."""
    labels = labels or {n: i for i, n in enumerate(named_rows)}
    cm = ClassMap(K, local={labels[n]: r for n, r in named_rows.items()})
    cm.set_names({labels[n]: n for n in named_rows})
    model = build_model(ModelSpec("smallcnn", 1, K - 1, "simplex", K), cm)
    return model.contract()


def test_names_round_trip_and_absent_when_empty(tmp_path) -> None:
    m = build_model(ModelSpec("smallcnn", 1, K - 1, "simplex", K))
    m.add_classes([0, 1])
    assert "names" not in m.contract()["class_map"]  # contracts without names are unchanged
    m.class_map.set_names({0: "ant", 1: "bee"})
    save_checkpoint(tmp_path / "m.pt", m)
    back, meta = load_checkpoint(tmp_path / "m.pt")
    assert back.class_map.names == {0: "ant", 1: "bee"}
    assert meta["contract"]["class_map"]["names"] == {"0": "ant", "1": "bee"}
    assert back.class_map.copy().names == {0: "ant", 1: "bee"}


def test_set_names_validates() -> None:
    cm = ClassMap(K, local={0: 7, 1: 6})
    with pytest.raises(ValueError, match=r"cannot name local classes \[2\]"):
        cm.set_names({2: "cat"})
    with pytest.raises(ValueError, match="'ant' is given to labels 0 and 1"):
        cm.set_names({0: "ant", 1: "ant"})
    with pytest.raises(ValueError, match="empty name"):
        cm.set_names({0: ""})


def test_check_compatible_identifies_named_classes_by_name() -> None:
    a = _contract({"ant": 7, "bee": 6})
    # The same classes on the same rows under swapped labels: the same classes.
    check_compatible(a, _contract({"ant": 7, "bee": 6}, labels={"ant": 1, "bee": 0}))
    # A successor with one more class on a free row.
    check_compatible(a, _contract({"ant": 7, "bee": 6, "cat": 5}))
    with pytest.raises(
        IncompatibleModels, match="class 'bee' sits on row 6 in model A but on row 5"
    ):
        check_compatible(a, _contract({"ant": 7, "bee": 5}))
    with pytest.raises(
        IncompatibleModels, match="row 6 holds class 'bee' in model A but class 'cat'"
    ):
        check_compatible(a, _contract({"ant": 7, "cat": 6}))
