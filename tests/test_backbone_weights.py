"""Backbones from pretrained weights: a local file loads without unpickling code and the
features before any training equal the library's own forward pass; the backbone's
preprocessing becomes the model's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from compatkit.backbones import backbone_preprocess, build_backbone, load_backbone_weights
from compatkit.errors import ConfigError

HAS_TIMM = importlib.util.find_spec("timm") is not None
HAS_TV = importlib.util.find_spec("torchvision") is not None
if HAS_TIMM or HAS_TV:  # an import can still fail beside a mismatched torch build
    try:
        import timm  # noqa: F401
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        HAS_TIMM = HAS_TV = False


def _save(sd: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_give_the_source_networks_features(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    source = build_backbone("resnet18", 3).eval()
    for p in source.parameters():  # not the initial values: the copy must carry them
        p.data.normal_(0, 0.05)
    sd = {**source.state_dict(), "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    path = _save(sd, tmp_path / f"w{suffix}")
    fresh = build_backbone("resnet18", 3).eval()
    dropped = load_backbone_weights(fresh, "resnet18", 3, weights=str(path))
    assert sorted(dropped) == ["fc.bias", "fc.weight"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), source(x))


def test_weights_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    path = _save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "w.safetensors")
    with pytest.raises(ConfigError, match=r"do not fit backbone 'resnet18': \d+ missing"):
        load_backbone_weights(build_backbone("resnet18", 3), "resnet18", 3, weights=str(path))
    evil = tmp_path / "evil.pt"
    import os

    class P:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"x": P()}, evil)
    with pytest.raises(ConfigError, match="refusing to unpickle"):
        load_backbone_weights(build_backbone("resnet18", 3), "resnet18", 3, weights=str(evil))
    with pytest.raises(ConfigError, match="no library weights"):
        load_backbone_weights(build_backbone("smallcnn", 3), "smallcnn", 3, pretrained=True)


@pytest.mark.skipif(not HAS_TIMM, reason="timm does not import here (needs torchvision)")
def test_timm_backbone_loads_a_state_dict_and_its_data_config(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
    path = _save(ref.state_dict(), tmp_path / "r18.safetensors")
    bb = build_backbone("timm:resnet18", 3).eval()
    load_backbone_weights(bb, "timm:resnet18", 3, weights=str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
        assert torch.allclose(bb(x), want, atol=1e-6)
    pre = backbone_preprocess("timm:resnet18", 3)
    cfg = timm.data.resolve_data_config({}, model=ref)
    assert pre.input_size == tuple(cfg["input_size"]) and pre.mean == tuple(cfg["mean"])
    assert pre.resize == int(cfg["input_size"][1] / cfg["crop_pct"])


@pytest.mark.skipif(not HAS_TV, reason="torchvision does not import here")
def test_torchvision_backbone_loads_a_state_dict_and_its_transforms(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=5).eval()
    path = _save(ref.state_dict(), tmp_path / "tv.pt")
    bb = build_backbone("tv:resnet18", 3).eval()
    load_backbone_weights(bb, "tv:resnet18", 3, weights=str(path))
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bb(x), ref(x), atol=1e-6)
    pre = backbone_preprocess("tv:resnet18", 3)
    assert (pre.resize, pre.crop, pre.interpolation) == (256, (224, 224), "bilinear")
