"""Registry of feature extractors ("backbones").

Each entry builds an ``nn.Module`` mapping ``(B, C, H, W)`` float images to
``(B, out_dim)`` features and exposes ``out_dim``. Register new ones with
``@register_backbone("name")``; tests loop over the registry, so a new entry
is tested without new test code.

- ``resnet18_cifar``: the CIFAR ResNet-18 of the reference code (He et al.,
  CVPR 2016, adapted to 32x32: 3x3 stem with stride 1, no max-pool, 512-d).
  A GPU model: about 30 images/s of training on a 2-core CPU.
- ``smallcnn``: three conv-BN-ReLU-maxpool blocks (32, 64, 128 channels) and a
  global average pool; trains at over 1,000 images/s at 28x28x1 on 2 CPU cores
  (``benchmarks/bench_backbones.py``). ``smallcnn_wide`` doubles the widths:
  a "bigger backbone" for better providers on the CPU.
- ``timm:<name>`` / ``tv:<name>``: any timm or torchvision model when the
  optional extra is installed (classifier removed, pooled features kept).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import nn

from .errors import ConfigError

__all__ = [
    "BACKBONES",
    "MissingExtraError",
    "build_backbone",
    "check_backbone_name",
    "register_backbone",
]

_EXTERNAL = {
    # prefix: (module to import, the pip command that installs it)
    "timm": ("timm", "pip install 'compatkit[timm]'"),
    "tv": ("torchvision", "pip install 'compatkit[vision]'"),
}


class MissingExtraError(ConfigError, ImportError):
    """A backbone needs an optional dependency that is not installed (the message says which
    pip command installs it). Also an ImportError, as it was before."""


BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        BACKBONES[name] = fn
        return fn

    return deco


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stride-1 stem, no max-pool, four stages, global pool."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), in_channels: int = 3) -> None:
        super().__init__()
        widths = (64, 128, 256, 512)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        layers, cin = [], 64
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(_BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class SmallCNN(nn.Module):
    """Three conv3x3-BN-ReLU-maxpool blocks and a global average pool: a CPU-sized backbone."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers, cin = [], in_channels
        for w in widths:
            layers += [
                nn.Conv2d(cin, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            cin = w
        self.features = nn.Sequential(*layers)
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


@register_backbone("resnet18_cifar")
def resnet18_cifar(in_channels: int = 3) -> nn.Module:
    return ResNetCifar((2, 2, 2, 2), in_channels)


@register_backbone("smallcnn")
def smallcnn(in_channels: int = 1) -> nn.Module:
    return SmallCNN(in_channels, (32, 64, 128))


@register_backbone("smallcnn_wide")
def smallcnn_wide(in_channels: int = 1) -> nn.Module:
    return SmallCNN(in_channels, (64, 128, 256))


class _Pooled(nn.Module):
    """Wrap an external model whose classifier was removed; records its feature size."""

    def __init__(self, net: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.net = net
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net(x), 1)


def check_backbone_name(key: str, name: str) -> None:
    """Refuse, before anything is built, a backbone that is unknown or whose extra is missing.

    ``key`` is the config key that named it, for the message.
    """
    lib, sep, model = name.partition(":")
    if sep and lib in _EXTERNAL:
        module, pip = _EXTERNAL[lib]
        if not model:
            raise ConfigError(f"{key}: {name!r} names no model after {lib}:")
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(f"{key}: backbone {name!r} needs {module}: {pip}")
        return
    if name not in BACKBONES:
        raise ConfigError(
            f"{key}: unknown backbone {name!r}; choose one of {sorted(BACKBONES)}"
            " or timm:<name> / tv:<name>"
        )


def _external(name: str, in_channels: int) -> nn.Module:
    lib, _, model = name.partition(":")
    check_backbone_name("backbone", name)
    if lib == "timm":
        import timm

        try:
            net = timm.create_model(model, pretrained=False, num_classes=0, in_chans=in_channels)
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise ConfigError(f"backbone {name!r}: {e}") from None
        return _Pooled(net, int(net.num_features))
    import torchvision

    try:
        net = torchvision.models.get_model(model, weights=None)
    except ValueError as e:  # torchvision: "Unknown model ..."
        raise ConfigError(f"backbone {name!r}: {e}") from None
    if in_channels != 3:
        raise ConfigError(f"torchvision backbone {name!r} expects 3 input channels")
    fc_name = "fc" if hasattr(net, "fc") else "classifier"
    head = getattr(net, fc_name)
    out_dim = head.in_features if isinstance(head, nn.Linear) else head[-1].in_features
    setattr(net, fc_name, nn.Identity())
    return _Pooled(net, int(out_dim))


def build_backbone(name: str, in_channels: int) -> nn.Module:
    """Build a backbone by registry name, or ``timm:<name>`` / ``tv:<name>`` when installed."""
    if name.startswith(("timm:", "tv:")):
        return _external(name, in_channels)
    check_backbone_name("backbone", name)
    net = BACKBONES[name](in_channels=in_channels)
    if not hasattr(net, "out_dim"):
        raise TypeError(f"backbone {name!r} must expose out_dim")
    return net
