"""Registry of feature extractors ("backbones").

Each entry builds an ``nn.Module`` mapping ``(B, C, H, W)`` float images to
``(B, out_dim)`` features and exposes ``out_dim``. Register new ones with
``@register_backbone("name")``; tests loop over the registry, so a new entry
is tested without new test code.

- ``resnet18``: the ImageNet-style ResNet-18 of He et al., CVPR 2016 (7x7
  stride-2 stem, BatchNorm, ReLU, 3x3 stride-2 max-pool, four stages of two
  BasicBlocks, adaptive average pool, 512-d), the backbone the authors of the
  paper released and ran on 32x32 CIFAR images (their notebooks use
  ``torchvision.models.resnet18()`` with ``fc = Identity``). Its parameters
  carry torchvision's names (``conv1``, ``bn1``, ``layer1.0.conv1``,
  ``layer2.0.downsample.0``, ...), so torchvision's state dicts and the
  authors' released models load into it without torchvision installed. On
  32x32 inputs the stem leaves 8x8 maps: 74 MFLOP per image forward, 15 times
  fewer than the CIFAR variant's 1,111 (``torch.utils.flop_counter``).
- ``resnet18_cifar``: a CIFAR-style ResNet-18 (3x3 stride-1 stem, no max-pool,
  512-d), common in the continual-learning literature but *not* the released
  code's backbone. A GPU model: about 30 images/s of training on a 2-core CPU.
- ``smallcnn``: three conv-BN-ReLU-maxpool blocks (32, 64, 128 channels) and a
  global average pool; trains at over 1,000 images/s at 28x28x1 on 2 CPU cores
  (``benchmarks/bench_backbones.py``). ``smallcnn_wide`` doubles the widths:
  a "bigger backbone" for better providers on the CPU.
- ``timm:<name>`` / ``tv:<name>``: any timm or torchvision model when the
  optional extra is installed (classifier removed, pooled features kept).

Weights: :func:`load_backbone_weights` starts a backbone from the library's pretrained
weights (``pretrained=True``: timm's and torchvision's own download mechanism, so it needs
the network once) or from a local file (a safetensors file or a ``torch.save`` state dict,
read with ``weights_only=True``), and :func:`backbone_preprocess` gives the input
preprocessing those weights were trained with (timm's data config, torchvision's weights
transforms), which becomes the model's.
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
    "backbone_out_dim",
    "backbone_preprocess",
    "build_backbone",
    "check_backbone_name",
    "load_backbone_weights",
    "read_state_dict",
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
    """Two 3x3 conv-BN pairs and a residual connection (He et al., CVPR 2016, Fig. 2).

    ``shortcut`` names the 1x1 conv-BN projection used when the shape changes:
    ``"downsample"`` in torchvision (and the released code), ``"shortcut"`` in
    the CIFAR variant, whose checkpoints already carry that name. An identity
    shortcut is an empty Sequential: no parameters, so no state-dict entries.
    """

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "shortcut") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self._shortcut_name = shortcut
        proj = nn.Sequential()
        if stride != 1 or cin != cout:
            proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.add_module(shortcut, proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + getattr(self, self._shortcut_name)(x))


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


class ResNetImageNet(nn.Module):
    """ImageNet-style ResNet with torchvision's module names, without the classifier ``fc``.

    Stem: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool; then ``layer1`` ..
    ``layer4`` (64, 128, 256, 512 channels; stride 2 from ``layer2`` on); adaptive
    average pool to 512-d. Initialised as torchvision does (He normal, fan-out, on
    convolutions; BN weight 1, bias 0), so a provider trained from scratch starts
    where the released code's would.
    """

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (w, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            stage = []
            for j in range(n):
                stage.append(_BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, "downsample"))
                cin = w
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = 512
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


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


@register_backbone("resnet18")
def resnet18(in_channels: int = 3) -> nn.Module:
    return ResNetImageNet((2, 2, 2, 2), in_channels)


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


def _import(lib: str):  # -> the module
    """``timm`` or ``torchvision``, or one line saying why it does not import: installed but
    broken is common (timm imports torchvision, whose wheels need their own torch build)."""
    module, pip = _EXTERNAL[lib]
    try:
        return importlib.import_module(module)
    except (ImportError, RuntimeError) as e:
        cause = " ".join(str(e).split())[:160]
        raise MissingExtraError(
            f"backbone {lib}: needs {module}, which is installed but does not import here "
            f"({type(e).__name__}: {cause}); install a torch and torchvision of one build, "
            f"e.g. {pip}"
        ) from None


def _external(name: str, in_channels: int, pretrained: bool = False) -> nn.Module:
    lib, _, model = name.partition(":")
    check_backbone_name("backbone", name)
    if lib == "timm":
        timm = _import("timm")

        try:
            net = timm.create_model(
                model, pretrained=pretrained, num_classes=0, in_chans=in_channels
            )
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise ConfigError(f"backbone {name!r}: {e}") from None
        return _Pooled(net, int(net.num_features))
    torchvision = _import("tv")

    try:
        net = torchvision.models.get_model(model, weights="DEFAULT" if pretrained else None)
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


def backbone_out_dim(name: str, in_channels: int) -> int:
    """Feature size of a backbone, found by building it on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return int(build_backbone(name, in_channels).out_dim)


# ----------------------------------------------------------------------------- weights

_CLASSIFIER_KEYS = ("fc.", "head.", "classifier.", "last_linear.", "head_dist.")
"""Key prefixes of the classifier a pretrained file carries and a backbone has removed."""


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, executing nothing: safetensors, or a ``torch.save`` state dict
    (also one wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``), ``module.`` prefixes
    of DataParallel removed. One :class:`ConfigError` line for anything else."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--weights {p}: no such file")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MissingExtraError(
                f"--weights {p}: reading safetensors needs safetensors: pip install safetensors"
            ) from None
        try:
            sd = load_file(str(p))
        except Exception as e:
            raise ConfigError(f"--weights {p}: not a safetensors file ({e})") from None
    else:
        from .runtime.safeload import safe_torch_load

        try:
            sd = safe_torch_load(p, "weights file")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"--weights {p}: not a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_backbone_weights(
    backbone: nn.Module,
    name: str,
    in_channels: int,
    pretrained: bool = False,
    weights: str | None = None,
) -> list[str]:
    """Start ``backbone`` (built by :func:`build_backbone`) from pretrained weights.

    ``pretrained``: the library's own weights (``timm:``/``tv:`` only); ``weights``: a
    local file (:func:`read_state_dict`). The classifier's keys in the file are dropped;
    any other key missing or unexpected, or of another shape, is refused in one line.
    Returns the dropped keys.
    """
    if pretrained and weights:
        raise ConfigError("--pretrained and --weights: give one (the file is pretrained weights)")
    target = backbone.net if isinstance(backbone, _Pooled) else backbone
    if pretrained:
        if not name.startswith(("timm:", "tv:")):
            raise ConfigError(
                f"--pretrained: backbone {name!r} has no library weights; give --weights FILE"
            )
        sd = _external(name, in_channels, pretrained=True).net.state_dict()
    elif weights:
        sd = read_state_dict(weights)
    else:
        return []
    own = target.state_dict()
    dropped = [k for k in sd if k not in own and k.startswith(_CLASSIFIER_KEYS)]
    sd = {k: v for k, v in sd.items() if k not in dropped}
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    shapes = [k for k in set(own) & set(sd) if own[k].shape != sd[k].shape]
    if missing or extra or shapes:
        parts = [
            f"{len(v)} {what} (e.g. {', '.join(sorted(v)[:3])})"
            for what, v in (("missing", missing), ("unexpected", extra), ("shape", shapes))
            if v
        ]
        src = weights or "the library's weights"
        raise ConfigError(f"{src} do not fit backbone {name!r}: " + "; ".join(parts))
    target.load_state_dict(sd, strict=True)
    return dropped


def backbone_preprocess(name: str, in_channels: int):  # -> Preprocess | None
    """The preprocessing a ``timm:``/``tv:`` backbone's pretrained weights expect (input size,
    resize, interpolation, mean, std); None for compatkit's own backbones (their statistics
    come from the training data)."""
    from .data.preprocess import Preprocess

    lib, _, model = name.partition(":")
    if lib == "timm":
        timm = _import("timm")
        with torch.device("meta"):
            net = timm.create_model(model, pretrained=False, num_classes=0, in_chans=in_channels)
        cfg = timm.data.resolve_data_config({}, model=net)
        return Preprocess.from_timm(cfg, name)
    if lib == "tv":
        torchvision = _import("tv")
        try:
            w = torchvision.models.get_model_weights(model).DEFAULT
        except (ValueError, AttributeError):
            return None
        t = w.transforms()
        crop = int(t.crop_size[0])
        return Preprocess.from_dict(
            {
                "input_size": [in_channels, crop, crop],
                "resize": int(t.resize_size[0]),
                "interpolation": str(t.interpolation.value),
                "mean": list(t.mean)[:in_channels],
                "std": list(t.std)[:in_channels],
                "name": name,
            }
        )
    return None
