"""The backbone registry: the released ImageNet-style ResNet-18 under torchvision's names, the
CIFAR variant under its own (unchanged) names, and the meta-device size probe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compatkit.backbones import BACKBONES, backbone_out_dim, build_backbone

from .released import torchvision_resnet18_shapes


def test_resnet18_has_torchvisions_names_and_shapes():
    net = build_backbone("resnet18", 3)
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == torchvision_resnet18_shapes()  # same names, same shapes, same order
    assert net.out_dim == 512
    assert sum(p.numel() for p in net.parameters()) == 11_176_512  # torchvision's 11,689,512 - fc


def test_resnet18_is_the_imagenet_architecture_on_32x32():
    """Stem 7x7 stride 2 and a 3x3 stride-2 max-pool: a 32x32 image is 8x8 when layer1 starts
    (the CIFAR variant keeps 32x32), and the pooled output is 512-d."""
    net = build_backbone("resnet18", 3).eval()
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert (net.maxpool.kernel_size, net.maxpool.stride, net.maxpool.padding) == (3, 2, 1)
    sizes = {}
    net.layer1.register_forward_pre_hook(lambda m, i: sizes.__setitem__("layer1_in", i[0].shape))
    out = net(torch.randn(2, 3, 32, 32))
    assert sizes["layer1_in"] == (2, 64, 8, 8) and out.shape == (2, 512)
    cifar = build_backbone("resnet18_cifar", 3).eval()
    cifar.layers.register_forward_pre_hook(lambda m, i: sizes.__setitem__("cifar_in", i[0].shape))
    cifar(torch.randn(2, 3, 32, 32))
    assert sizes["cifar_in"] == (2, 64, 32, 32)


def test_resnet18_initialisation_is_torchvisions():
    torch.manual_seed(0)
    net = build_backbone("resnet18", 3)
    w = net.layer3[0].conv2.weight.detach()  # He normal, fan-out: std sqrt(2 / (256 * 3 * 3))
    assert abs(float(w.std()) - (2 / (256 * 9)) ** 0.5) < 0.002
    assert torch.equal(net.bn1.weight, torch.ones(64)) and torch.equal(
        net.bn1.bias, torch.zeros(64)
    )


def test_resnet18_loads_a_torchvision_layout_state_dict_strictly():
    g = torch.Generator().manual_seed(0)
    sd = {
        k: torch.randn(s, generator=g) if s else torch.tensor(7)
        for k, s in torchvision_resnet18_shapes()
    }
    net = build_backbone("resnet18", 3)
    net.load_state_dict(sd, strict=True)
    assert torch.equal(net.layer2[0].downsample[0].weight, sd["layer2.0.downsample.0.weight"])


def test_resnet18_matches_torchvision_when_installed():
    tv = pytest.importorskip("torchvision")
    ref = tv.models.resnet18()
    ref.fc = torch.nn.Identity()
    ours = build_backbone("resnet18", 3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


def test_resnet18_cifar_keeps_its_names():
    """Checkpoints written with the CIFAR variant must still load: its names do not move."""
    keys = list(build_backbone("resnet18_cifar", 3).state_dict())
    assert keys[0] == "stem.0.weight"
    assert "layers.2.shortcut.0.weight" in keys and "layers.2.shortcut.1.running_var" in keys
    assert not any("downsample" in k for k in keys)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_out_dim_matches_a_forward_pass(name):
    channels = 1 if name.startswith("smallcnn") else 3
    net = build_backbone(name, channels).eval()
    out = net(torch.randn(2, channels, 32, 32))
    assert backbone_out_dim(name, channels) == out.shape[1] == net.out_dim


def test_resnet18_block_is_a_basic_block():
    """One block against conv-BN-ReLU-conv-BN + projection, written with torch.nn.functional."""
    net = build_backbone("resnet18", 3).eval()
    blk = net.layer2[0]
    with torch.no_grad():
        for m in blk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 64, 8, 8)

    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = F.relu(bn(blk.bn1, F.conv2d(x, blk.conv1.weight, stride=2, padding=1)))
    h = bn(blk.bn2, F.conv2d(h, blk.conv2.weight, padding=1))
    sc = bn(blk.downsample[1], F.conv2d(x, blk.downsample[0].weight, stride=2))
    torch.testing.assert_close(blk(x), F.relu(h + sc))
