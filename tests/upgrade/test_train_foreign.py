"""Successors of a foreign model (in its feature space) and anchors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compatkit.checkpoint import check_compatible, load_checkpoint
from compatkit.errors import ConfigError
from compatkit.upgrade.embed import load_embedder
from compatkit.upgrade.export import export_checkpoint
from compatkit.upgrade.train import TrainOptions, train_model

FAST = {"epochs": 1, "batch_size": 32, "device": "cpu"}


def _opts(**kw) -> TrainOptions:
    return TrainOptions(**{**FAST, **kw})


@pytest.fixture(scope="module")
def v1(tiny, tmp_path_factory) -> tuple[Path, Path]:
    """A compatkit v1 (K=8, 7-d) and the same network exported as a foreign TorchScript."""
    d = tmp_path_factory.mktemp("foreign")
    train_model(str(tiny["v1"]), d / "v1.pt", _opts(num_classes=8))
    export_checkpoint(d / "v1.pt", "torchscript", d / "prod.pt", name="prod-v1")
    return d / "v1.pt", d / "prod.pt"


def test_hoc_successor_lives_in_the_foreign_space(v1, tiny, tmp_path: Path) -> None:
    _, foreign = v1
    res = train_model(str(tiny["v2new"]), tmp_path / "v2.pt", _opts(), old=foreign)
    model, meta = load_checkpoint(tmp_path / "v2.pt")
    assert model.spec.feat_dim == 7 and model.spec.head == "simplex"
    assert model.spec.num_classes == 8  # K = d + 1
    x = meta["extra"]
    assert x["old"]["format"] == "torchscript" and x["method"] == "hoc"
    assert x["options"]["init"] == "scratch"
    assert x["preprocess"] == load_embedder(foreign).preprocess.to_dict()
    assert sorted(x["class_names"].values()) == ["aardvark", "ant", "bee", "cat", "dog"]
    check_compatible(load_embedder(foreign).contract, meta["contract"])
    assert res.extra["losses"] and all(v > 0 for v in res.extra["losses"])


def test_bct_successor_uses_the_class_means_as_old_classifier(v1, tiny, tmp_path) -> None:
    _, foreign = v1
    train_model(str(tiny["v2"]), tmp_path / "b.pt", _opts(method="bct", lr=1e-9), old=foreign)
    model, meta = load_checkpoint(tmp_path / "b.pt")
    assert model.spec.head == "learnable" and model.spec.feat_dim == 7
    # at a vanishing learning rate the head is still the class means of v1's features
    emb = load_embedder(foreign)
    from compatkit.upgrade.data import load_user_data

    data = load_user_data(str(tiny["v2"]), preprocess=emb.preprocess)
    f = emb.embed(data)
    names = {v: int(k) for k, v in meta["extra"]["class_names"].items()}
    for c, name in enumerate(data.classes):
        mean = torch.nn.functional.normalize(f[data.labels == c].mean(0), dim=0)
        row = model.head.w[model.class_map.local[names[name]]].detach()
        assert torch.allclose(row, mean, atol=1e-3)


def test_what_a_foreign_old_cannot_give_is_refused(v1, tiny, tmp_path) -> None:
    _, foreign = v1
    with pytest.raises(ConfigError, match=r"--init old: .* torchscript model"):
        train_model(str(tiny["v2"]), tmp_path / "x.pt", _opts(init="old"), old=foreign)
    with pytest.raises(ConfigError, match="ETF head's frame"):
        train_model(str(tiny["v2"]), tmp_path / "x.pt", _opts(method="etf-hoc"), old=foreign)


def test_anchors_add_the_old_model_term_on_their_images(v1, tiny, tmp_path) -> None:
    old, _ = v1
    opts = _opts(anchor=str(tiny["gallery"]), anchor_weight=2.0, anchor_term="method")
    res = train_model(str(tiny["v2new"]), tmp_path / "a.pt", opts, old=old)
    assert res.extra["anchor"] == {"data": str(tiny["gallery"]), "weight": 2.0, "term": "method"}
    assert all("anchor" in p and p["anchor"] > 0 for p in res.extra["loss_parts"])
    flat = tmp_path / "flat"  # an unlabelled gallery anchors as well
    flat.mkdir()
    for p in sorted(Path(tiny["gallery"]).glob("*/*.png"))[:20]:
        (flat / f"{p.parent.name}-{p.name}").write_bytes(p.read_bytes())
    opts = _opts(anchor=str(flat))
    res = train_model(str(tiny["v2new"]), tmp_path / "f.pt", opts, old=old)
    assert res.extra["anchor"] == {"data": str(flat), "weight": 1.0, "term": "fd"}
    assert 0 < res.extra["loss_parts"][0]["anchor"] <= 2  # 1 - cos
    with pytest.raises(ConfigError, match=r"--anchor: .* pass --old"):
        train_model(str(tiny["v1"]), tmp_path / "n.pt", _opts(anchor=str(tiny["gallery"])))
