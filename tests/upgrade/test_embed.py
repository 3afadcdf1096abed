"""A checkpoint as an embedder: fingerprint, normalisation from its metadata, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compatkit.checkpoint import read_contract, save_checkpoint
from compatkit.data import ImageSet
from compatkit.errors import CheckpointError, DataError
from compatkit.model import ModelSpec, build_model
from compatkit.upgrade.embed import load_embedder

MEAN, STD = [0.25], [0.5]


def _checkpoint(path: Path, extra: dict | None = None) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8))
    model.add_classes([0, 1, 2], "local")
    model.class_map.set_names({0: "ant", 1: "bee", 2: "cat"})
    if extra is None:
        extra = {"normalize": {"mean": MEAN, "std": STD}, "input_size": [1, 12, 12]}
    save_checkpoint(path, model, extra=extra)
    return path


def test_embed_is_the_normalised_junction_output(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "m.pt")
    emb = load_embedder(path)
    assert emb.fingerprint == read_contract(path)["sha256"]
    assert emb.class_names == {0: "ant", 1: "bee", 2: "cat"}
    assert emb.input_size == (1, 12, 12) and emb.feat_dim == 7
    images = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8)
    out = emb.embed(images, batch_size=2)
    assert out.dtype == torch.float32 and out.shape == (5, 7)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-6)
    # The obvious way: (x/255 - mean)/std through backbone and junction, one image at a time.
    model = emb.model.eval()
    with torch.no_grad():
        for i in range(5):
            x = (images[i : i + 1].float() / 255 - MEAN[0]) / STD[0]
            ref = F.normalize(model.junction(model.backbone(x)), dim=1)[0]
            assert torch.allclose(out[i], ref, atol=1e-5)
    as_set = ImageSet(images, torch.zeros(5, dtype=torch.int64), ["x"])
    assert torch.allclose(emb.embed(as_set), out, atol=1e-6)


def test_wrong_images_are_refused(tmp_path: Path) -> None:
    emb = load_embedder(_checkpoint(tmp_path / "m.pt"))
    with pytest.raises(DataError, match="3 channel"):
        emb.embed(torch.zeros(1, 3, 12, 12, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"are 28x28 pixels but .* trained on 12x12"):
        emb.embed(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(DataError, match="expected uint8"):
        emb.embed(torch.zeros(1, 1, 12, 12))


def test_checkpoint_without_normalisation_or_size(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no input normalisation"):
        load_embedder(_checkpoint(tmp_path / "a.pt", extra={}))
    emb = load_embedder(
        _checkpoint(tmp_path / "b.pt", extra={"normalize": {"mean": MEAN, "std": STD}})
    )
    assert emb.input_size == (1, None, None)
    assert emb.embed(torch.zeros(2, 1, 20, 20, dtype=torch.uint8)).shape == (2, 7)
    with pytest.raises(CheckpointError, match="no such file"):
        load_embedder(tmp_path / "missing.pt")
