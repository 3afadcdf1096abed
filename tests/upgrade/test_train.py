"""Training on a folder and training a successor: names, vertices, K, heads, options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compatkit.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from compatkit.data import channel_stats
from compatkit.errors import CheckpointError, ConfigError
from compatkit.model import ModelSpec, build_model
from compatkit.upgrade.data import load_user_data
from compatkit.upgrade.gate import run_check
from compatkit.upgrade.successor import build_successor
from compatkit.upgrade.train import TrainOptions, plan_classes, stratified_split, train_model

FAST = {"epochs": 1, "batch_size": 32, "device": "cpu"}


def _opts(**kw) -> TrainOptions:
    return TrainOptions(**{**FAST, **kw})


def _rows_by_name(path: Path) -> dict[str, int]:
    cm = load_checkpoint(path)[0].class_map
    return {cm.names[c]: r for c, r in cm.local.items()}


@pytest.fixture(scope="module")
def v1(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "v1.pt"
    train_model(str(tiny["v1"]), out, _opts(num_classes=8, val_fraction=0.25))
    return out


def test_first_model_contract_and_metadata(v1: Path, tiny) -> None:
    model, meta = load_checkpoint(v1)
    assert model.spec.head == "simplex" and model.spec.num_classes == 8
    assert model.spec.feat_dim == 7 and model.spec.backbone == "smallcnn"
    # Folder order gives ids; ids take vertices from the bottom (K-1-id).
    assert _rows_by_name(v1) == {"ant": 7, "bee": 6, "cat": 5}
    x = meta["extra"]
    assert x["class_names"] == {"0": "ant", "1": "bee", "2": "cat"}
    assert x["input_size"] == [1, 28, 28] and x["method"] == "cores" and x["old"] is None
    mean, std = channel_stats(load_user_data(str(tiny["v1"])).images)
    assert x["normalize"]["mean"] == pytest.approx(mean) and x["normalize"]["std"] == pytest.approx(
        std
    )
    assert x["data"] == {
        "spec": str(tiny["v1"]),
        "images": 54,
        "held_out": 18,
        "loading": "memory",
        "skipped": 0,
    }
    assert len(x["val_accuracy"]) == 1 and 0 <= x["val_accuracy"][0] <= 100
    assert x["options"]["lr"] == 0.05 and x["options"]["pad"] == 3  # scratch rate; 28 px // 8


def test_successor_keeps_vertices_by_name_and_adds_new_ones(v1: Path, tiny, tmp_path) -> None:
    out = tmp_path / "v2.pt"
    res = train_model(str(tiny["v2new"]), out, _opts(), old=v1)
    rows = _rows_by_name(out)
    old_rows = _rows_by_name(v1)
    # aardvark sorts first in the folder (label 0 there), yet ant, bee, cat keep their vertices.
    assert {n: rows[n] for n in old_rows} == old_rows
    assert rows["aardvark"] == 4 and rows["dog"] == 3  # new classes: the next free vertices
    assert load_checkpoint(out)[0].class_map.names == {
        0: "ant",
        1: "bee",
        2: "cat",
        3: "aardvark",
        4: "dog",
    }
    x = res.extra
    assert x["method"] == "hoc" and x["method_options"]["lam"] == 0.1
    assert x["old"]["fingerprint"] == load_checkpoint(v1)[1]["sha256"]
    assert x["options"]["lr"] == 0.001 and x["options"]["freeze_bn"] is True
    assert x["normalize"] == load_checkpoint(v1)[1]["extra"]["normalize"]  # OLD's input space
    check_compatible(load_checkpoint(v1)[1], load_checkpoint(out)[1])


def test_k_without_room_is_refused_with_the_number_needed(v1: Path, tiny, tmp_path) -> None:
    small = tmp_path / "k4.pt"
    train_model(str(tiny["v1"]), small, _opts(num_classes=4))
    with pytest.raises(
        ConfigError,
        match=r"K=4 vertices cannot hold 5 classes \(3 the old model knows \+ 2 new: "
        r"aardvark, dog\).*--num-classes >= 5",
    ):
        train_model(str(tiny["v2new"]), tmp_path / "x.pt", _opts(), old=small)
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ConfigError, match="a successor keeps K"):
        train_model(str(tiny["v2"]), tmp_path / "x.pt", _opts(num_classes=16), old=small)


def test_scratch_successor_with_another_backbone_shares_the_space(v1: Path, tiny, tmp_path) -> None:
    out = tmp_path / "wide.pt"
    train_model(str(tiny["v2"]), out, _opts(init="scratch", backbone="smallcnn_wide"), old=v1)
    model, meta = load_checkpoint(out)
    assert model.spec.backbone == "smallcnn_wide" and meta["extra"]["options"]["freeze_bn"] is False
    check_compatible(load_checkpoint(v1)[1], meta)  # a backbone change keeps the contract
    v = run_check(str(v1), str(out), str(tiny["query"]), str(tiny["gallery"]), device="cpu")
    assert v["contract"]["ok"] and v["new"]["backbone"] == "smallcnn_wide"  # the gate agrees
    with pytest.raises(ConfigError, match="--init old needs the old model's backbone"):
        train_model(str(tiny["v2"]), tmp_path / "y.pt", _opts(backbone="smallcnn_wide"), old=v1)


@pytest.mark.parametrize(
    "method", ["er", "bct", "bct-er", "lwf", "fd", "cvs", "dsimplex-fd", "cores"]
)
def test_any_registered_method_trains_a_successor(method: str, v1: Path, tiny, tmp_path) -> None:
    out = tmp_path / f"{method}.pt"
    res = train_model(str(tiny["v2new"]), out, _opts(method=method, epochs=1), old=v1)
    model, meta = load_checkpoint(out)
    assert meta["extra"]["method"] == method and all(
        torch.isfinite(torch.tensor(res.extra["losses"]))
    )
    assert model.spec.feat_dim == 7  # comparable with v1 whatever the head
    check_compatible(load_checkpoint(v1)[1], meta)


def test_learnable_successor_starts_from_the_old_vertices(v1: Path) -> None:
    old, _ = load_checkpoint(v1)
    ids = {0: "ant", 1: "bee", 2: "cat", 3: "dog"}
    new = build_successor(old, "learnable", "smallcnn", ids, "old")
    assert new.spec.head == "learnable" and new.class_map.names == ids
    for c in range(3):  # each known class starts on its old vertex
        assert torch.equal(
            new.head.w[new.class_map.local[c]], old.head.weight[old.class_map.local[c]]
        )
    for name, p in old.backbone.state_dict().items():
        assert torch.equal(new.backbone.state_dict()[name], p)
    with pytest.raises(ConfigError, match="fixed simplex head and the method needs a fixed etf"):
        build_successor(old, "etf", "smallcnn", ids, "old")


def test_successor_of_a_checkpoint_without_names_is_refused(tiny, tmp_path) -> None:
    m = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8))
    m.add_classes([0, 1])
    save_checkpoint(tmp_path / "run.pt", m, extra={"normalize": {"mean": [0.5], "std": [0.5]}})
    with pytest.raises(CheckpointError, match="its classes have no names"):
        train_model(str(tiny["v2"]), tmp_path / "x.pt", _opts(), old=tmp_path / "run.pt")


def test_options_are_validated() -> None:
    cases = {
        "method: unknown method 'nope'": {"method": "nope"},
        "method 'er' trains a learnable head, not simplex": {"method": "er", "head": "simplex"},
        "lr must be a finite number > 0": {"lr": float("nan")},
        "val_fraction must lie in": {"val_fraction": 1.0},
        r"method_options.hoc: method 'hoc' has no option\(s\) \['lamda'\]": {
            "method_options": {"hoc": {"lamda": 0.3}}
        },
        "init must be": {"init": "warm"},
    }
    for why, kw in cases.items():
        with pytest.raises(ConfigError, match=why):
            TrainOptions(**kw).validate()
    with pytest.raises(ConfigError, match="unknown config key epoch"):
        TrainOptions.from_dict({"epoch": 3})


def test_plan_classes_and_split() -> None:
    assert plan_classes(["b", "a"], None) == {0: "b", 1: "a"}
    assert plan_classes(["a", "z", "c"], {0: "c", 1: "b"}) == {0: "c", 1: "b", 2: "a", 3: "z"}
    from compatkit.data import ImageSet

    data = ImageSet(
        torch.zeros(13, 1, 2, 2, dtype=torch.uint8), torch.tensor([0] * 10 + [1] * 3), ["a", "b"]
    )
    tr, va = stratified_split(data, 0.2, torch.Generator().manual_seed(0))
    assert va.labels.tolist() == [0, 0, 1] and len(tr) == 10
    assert stratified_split(data, 0.0, torch.Generator())[1] is None
