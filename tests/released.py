"""The authors' released model files (miccunifi/iamcl2r), rebuilt for tests in their exact
layout, and their forward pass written independently with torch.nn.functional.

Layout, from the released code: ``Incremental_ResNet`` (models/__init__.py) holds
``backbone`` (models/resnet.py: torchvision's ResNet-18 names), ``fc1`` (bias-free 512 -> K-1,
only for the d-Simplex model) and ``fc2`` (bias-free classifier); ``save_checkpoint``
(utils.py) writes ``{"net", "args", "optimizer", "best_acc", "scheduler_lr"}`` with
``args`` an ``iamcl2r.params.ExperimentParams``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def torchvision_resnet18_shapes(in_channels: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    """torchvision's resnet18 state dict, written out from its documented architecture
    (torchvision.models.resnet: conv1 7x7/2, bn1, layer1..layer4 of two BasicBlocks with
    conv1/bn1/conv2/bn2 and a downsample (1x1 conv, BN) in the first block of layer2..4),
    without ``fc`` (the released code replaces it with Identity)."""

    def bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
        return [
            (f"{prefix}.weight", (c,)),
            (f"{prefix}.bias", (c,)),
            (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)),
            (f"{prefix}.num_batches_tracked", ()),
        ]

    out = [("conv1.weight", (64, in_channels, 7, 7)), *bn("bn1", 64)]
    cin = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            out += [(f"{p}.conv1.weight", (planes, cin, 3, 3)), *bn(f"{p}.bn1", planes)]
            out += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *bn(f"{p}.bn2", planes)]
            if block == 0 and stage > 1:
                out += [(f"{p}.downsample.0.weight", (planes, cin, 1, 1))]
                out += bn(f"{p}.downsample.1", planes)
            cin = planes
    return out


def backbone_weights(seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random ResNet-18 weights whose activations stay O(1): He-scaled convolutions, BN
    statistics and affine parameters near (but not at) their defaults."""
    g = torch.Generator().manual_seed(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, shape in torchvision_resnet18_shapes():
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(1234)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            sd[name] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif name.endswith("running_var"):
            sd[name] = torch.rand(shape, generator=g) * 0.5 + 0.75
        elif name.endswith(("running_mean", "bias")):
            sd[name] = torch.randn(shape, generator=g) * 0.1
        else:  # BN weight
            sd[name] = torch.rand(shape, generator=g) * 0.5 + 0.5
    return sd


def dsimplex(k: int) -> torch.Tensor:
    """The released ``dsimplex`` (models/__init__.py): identity rows, the point
    (1 - sqrt(K)) / (K - 1), centred, rows normalised (+1e-8), in float32."""
    n = k - 1
    t = torch.zeros(n + 1, n)
    t[:-1] = torch.eye(n)
    t[-1] += (1.0 - torch.sqrt(torch.tensor([1.0 + n]))) / n
    t -= t.mean(dim=0)
    return t / (t.norm(dim=1, keepdim=True) + 1e-8)


def released_net(head: str, classes: int, k: int = 1024, seed: int = 0) -> OrderedDict:
    """``Incremental_ResNet.state_dict()``: ``backbone.*``, then ``fc1.weight`` (simplex only)
    and ``fc2.weight``."""
    g = torch.Generator().manual_seed(seed + 1)
    net = OrderedDict((f"backbone.{n}", v) for n, v in backbone_weights(seed).items())
    if head == "simplex":
        net["fc1.weight"] = torch.randn(k - 1, 512, generator=g) / 512**0.5
        net["fc2.weight"] = dsimplex(k)
    else:
        net["fc2.weight"] = torch.randn(classes, 512, generator=g) / 512**0.5
    return net


def with_key_variant(net: OrderedDict, variant: str) -> OrderedDict:
    """The key spellings the released loader copes with."""
    if variant == "blocks":  # a layer's blocks in a ``blocks`` Sequential: layer1.blocks.0...
        return OrderedDict(
            (re.sub(r"(layer\d)\.", r"\1.blocks.", k, count=1), v) for k, v in net.items()
        )
    if variant == "module":  # saved from a DistributedDataParallel wrapper
        return OrderedDict((f"module.{k}", v) for k, v in net.items())
    if variant == "bare":  # the backbone's own names, no ``backbone.`` prefix
        return OrderedDict((k.removeprefix("backbone."), v) for k, v in net.items())
    assert variant == "plain", variant
    return net


@dataclasses.dataclass
class ExperimentParams:
    """A stand-in of ``iamcl2r.params.ExperimentParams`` (a subset of its fields), registered
    under the authors' module name only while a file is written."""

    backbone: str = "resnet18"
    fixed: bool = True
    preallocated_classes: int = 1024
    epochs: int = 70
    lr: float = 0.001
    replace_ids: list = dataclasses.field(default_factory=lambda: [0, 2, 4])
    classes_at_task: list = dataclasses.field(default_factory=list)
    seen_classes: object = None
    new_data_ids_at_task: list = dataclasses.field(default_factory=list)


def save_released(path: Path, net: OrderedDict, classes_in_args: int | None = None) -> Path:
    """``torch.save`` a dict in the layout of the released ``save_checkpoint``; its ``args``
    is an instance of a class that no longer exists once this returns."""
    pkg, mod = types.ModuleType("iamcl2r"), types.ModuleType("iamcl2r.params")
    cls = type("ExperimentParams", (ExperimentParams,), {"__module__": "iamcl2r.params"})
    cls.__qualname__ = "ExperimentParams"
    mod.ExperimentParams = cls
    args = cls()
    if classes_in_args:
        args.classes_at_task = [classes_in_args]
        args.seen_classes = torch.arange(classes_in_args)
        args.new_data_ids_at_task = [np.arange(classes_in_args)]
    model = torch.nn.Linear(4, 3, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=70, eta_min=1e-5)
    ckpt = {
        "net": net,
        "args": args,
        "optimizer": opt.state_dict(),
        "best_acc": 61.25,
        "scheduler_lr": sched.state_dict(),
    }
    sys.modules["iamcl2r"], sys.modules["iamcl2r.params"] = pkg, mod
    try:
        torch.save(ckpt, path)
    finally:
        del sys.modules["iamcl2r"], sys.modules["iamcl2r.params"]
    return path


def released_features(net: dict, x: torch.Tensor) -> torch.Tensor:
    """The released model's retrieval feature, ``Incremental_ResNet.forward(x)['features']``
    in eval mode, written with torch.nn.functional only: ResNet-18 (models/resnet.py) then
    ``fc1`` when the model has one."""
    w = {k.removeprefix("backbone."): v for k, v in net.items()}

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t, w[f"{p}.running_mean"], w[f"{p}.running_var"], w[f"{p}.weight"], w[f"{p}.bias"],
            training=False, eps=1e-5,
        )  # fmt: skip

    h = F.relu(bn(F.conv2d(x, w["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, kernel_size=3, stride=2, padding=1)
    for stage in (1, 2, 3, 4):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            stride = 2 if (stage > 1 and block == 0) else 1
            out = F.relu(
                bn(F.conv2d(h, w[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1")
            )
            out = bn(F.conv2d(out, w[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in w:
                short = bn(
                    F.conv2d(h, w[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1"
                )
            else:
                short = h
            h = F.relu(out + short)
    z = F.adaptive_avg_pool2d(h, 1).flatten(1)
    return F.linear(z, w["fc1.weight"]) if "fc1.weight" in w else z
