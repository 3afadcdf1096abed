"""The authors' released models (miccunifi/iamcl2r) as compatkit checkpoints.

Biondi et al., CVPR 2024, release their replacement models ("pre-trained
elsewhere": ResNet-18s trained on 100, 300 and 600 ImageNet32 classes) as
``torch.save`` files, one per model and head kind (``pretrained_models_ckpts/
simplex/ckpt_{0,1,2}.pt`` and ``learnable/ckpt_{0,1,2}.pt``). Layout, from
``src/iamcl2r/utils.py`` (``save_checkpoint``) and ``models/__init__.py``
(``Incremental_ResNet``, ``create_model``):

- a dict whose ``net`` entry is the state dict (the notebooks save the state
  dict alone); beside it ``args`` (an ``ExperimentParams`` of the authors'
  own class), ``optimizer`` and ``scheduler_lr`` states and ``best_acc``;
- backbone keys under ``backbone.`` with torchvision's ResNet-18 names,
  sometimes with ``.blocks.`` inside names (the released loader renames
  ``.blocks.`` to ``.``) and a ``module.`` prefix (a DDP-wrapped model);
- ``fc1.weight``: the bias-free 512 -> K-1 junction of the d-Simplex models
  (K = 1024); the learnable models have none, their feature is the 512-d
  pooled backbone output;
- ``fc2.weight``: the classifier, (K, K-1) d-Simplex vertices or (N, 512)
  learnable rows for the provider's N classes.

The file is read with :func:`~compatkit.interop.torchfile.read_torch_file`
(nothing in it is executed); names and shapes are checked against compatkit's
``resnet18``; the result is an ordinary compatkit model whose contract says
what the file implies: backbone ``resnet18``, the provider's classes 0..N-1
on rows 0..N-1 ("from the top" of the simplex, docs/method.md §2; for a
learnable head the classifier rows in order). For the d-Simplex head the
released code discards the stored classifier and rebuilds the simplex
(``models/__init__.py`` 161-181), and so does the conversion: the vertices are
compatkit's own (the same construction), and the stored ``fc2`` is only
compared with them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backbones import build_backbone
from ..errors import CheckpointError, InputError
from ..model import CompatModel, ModelSpec, build_model
from ..simplex import simplex_vertices
from .torchfile import InertObject, read_torch_file

__all__ = ["BACKBONE", "Conversion", "convert_iamcl2r"]

BACKBONE = "resnet18"
"""The released backbone (src ``models/resnet.py``; the notebooks' torchvision resnet18)."""
_HEADS = ("simplex", "learnable")


@dataclass
class Conversion:
    """A converted model, what the source said about itself, and what was left behind."""

    model: CompatModel
    classes: int
    """The provider's number of classes (rows 0..classes-1)."""
    classes_from: str
    """Where ``classes`` came from: ``--classes``, ``args.classes_at_task`` or ``fc2.weight``."""
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    """Top-level entries of the file that are not weights (args, optimizer, ...)."""

    def extra(self, path: Path) -> dict:
        """Metadata for the checkpoint's ``extra`` field."""
        return {
            "role": "provider",
            "name": path.stem,
            "source": {
                "format": "iamcl2r",
                "file": path.name,
                "classes": self.classes,
                "classes_from": self.classes_from,
                "dropped": self.dropped,
                "notes": self.notes,
            },
        }


def _state_dict(obj: Any, p: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ``net`` entry, or the file itself when it is a bare state dict."""
    if isinstance(obj, Mapping) and "net" in obj:
        sd, dropped = obj["net"], sorted(str(k) for k in obj if k != "net")
    elif (
        isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        sd, dropped = obj, []
    else:
        raise CheckpointError(
            f"{p}: neither a dict with a 'net' state dict nor a state dict "
            f"(found {type(obj).__name__})"
        )
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p}: its 'net' entry is not a state dict of tensors")
    return {str(k): v for k, v in sd.items()}, dropped


def _normalise_keys(sd: dict[str, torch.Tensor], p: Path) -> dict[str, torch.Tensor]:
    """Undo the released variants: ``module.`` prefixes, ``.blocks.``, a missing ``backbone.``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key
        while k.startswith("module."):
            k = k[len("module.") :]
        k = k.replace(".blocks.", ".")
        if k in out:
            raise CheckpointError(f"{p}: keys {key!r} and another one both mean {k!r}")
        out[k] = value
    if not any(k.startswith("backbone.") for k in out):  # a bare backbone state dict
        out = {
            (k if k.startswith(("fc1.", "fc2.")) else f"backbone.{k}"): v for k, v in out.items()
        }
    return out


def _names(keys: list[str], limit: int = 3) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_backbone(backbone: dict[str, torch.Tensor], p: Path) -> int:
    """Check names and shapes against compatkit's resnet18; return the input channels."""
    conv1 = backbone.get("conv1.weight")
    in_channels = int(conv1.shape[1]) if conv1 is not None and conv1.dim() == 4 else 3
    want = build_backbone(BACKBONE, in_channels).state_dict()
    missing = sorted(set(want) - set(backbone))
    unexpected = sorted(set(backbone) - set(want))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_names(['backbone.' + k for k in missing])}")
        if unexpected:
            parts.append(f"unexpected {_names(['backbone.' + k for k in unexpected])}")
        raise CheckpointError(f"{p}: not the released ResNet-18 backbone ({'; '.join(parts)})")
    for k, v in want.items():
        if tuple(backbone[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{p}: backbone.{k} has shape {tuple(backbone[k].shape)}, the released "
                f"ResNet-18 has {tuple(v.shape)}"
            )
    return in_channels


def _classes_in_args(obj: Any) -> int | None:
    """``args.classes_at_task[-1]``: how many classes the saved model had seen, if recorded."""
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if not isinstance(args, InertObject):
        return None
    seen = args.fields().get("classes_at_task")
    if isinstance(seen, list | tuple) and seen:
        last = seen[-1]
        if isinstance(last, int) and not isinstance(last, bool) and last > 0:
            return last
    return None


def convert_iamcl2r(path: str | os.PathLike, head: str, classes: int | None = None) -> Conversion:
    """Read a released iamcl2r model file and build the compatkit model it holds.

    ``head`` is the file's head kind (``simplex`` or ``learnable``: the released files sit
    in folders of these names). ``classes`` is the provider's number of classes; needed
    only when the file does not tell (a learnable head's classifier has one row per class;
    a d-Simplex file tells only through ``args.classes_at_task``).

    Raises :class:`CheckpointError` for an unreadable or unsafe file or weights of another
    layout, and :class:`InputError` for a ``head`` or ``classes`` that do not fit the file.
    """
    p = Path(path)
    if head not in _HEADS:
        raise InputError(f"--head must be one of {', '.join(_HEADS)}, got {head!r}")
    if classes is not None and classes < 1:
        raise InputError(f"--classes must be >= 1, got {classes}")
    obj = read_torch_file(p)
    sd, dropped = _state_dict(obj, p)
    sd = _normalise_keys(sd, p)
    backbone = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    fc1, fc2 = sd.get("fc1.weight"), sd.get("fc2.weight")
    stray = sorted(
        k for k in sd if not k.startswith("backbone.") and k not in ("fc1.weight", "fc2.weight")
    )
    if stray:
        raise CheckpointError(f"{p}: unexpected weights {_names(stray)} beside backbone, fc1, fc2")
    in_channels = _check_backbone(backbone, p)
    notes: list[str] = []
    weights = {f"backbone.{k}": v for k, v in backbone.items()}

    if head == "simplex":
        if fc1 is None or fc1.dim() != 2 or fc1.shape[1] != 512:
            got = "none" if fc1 is None else tuple(fc1.shape)
            raise CheckpointError(
                f"{p}: a d-Simplex model needs fc1.weight, the 512 -> K-1 junction (found {got}); "
                "is this a learnable-head file (--head learnable)?"
            )
        k = int(fc1.shape[0]) + 1
        if fc2 is not None:
            if tuple(fc2.shape) != (k, k - 1):
                raise CheckpointError(
                    f"{p}: fc2.weight has shape {tuple(fc2.shape)}, a d-Simplex of K={k} is "
                    f"({k}, {k - 1})"
                )
            gap = float((fc2.float() - simplex_vertices(k)).abs().max())
            notes.append(
                "fc2.weight (the stored classifier) dropped and rebuilt, as the released loader "
                f"does; it differs from compatkit's d-Simplex of K={k} by at most {gap:.1e}"
            )
        told = _classes_in_args(obj)
        n, source = _pick_classes(p, classes, told, None)
        if n > k:
            raise InputError(f"--classes {n} exceeds the K={k} vertices of {p}")
        spec = ModelSpec(BACKBONE, in_channels, k - 1, "simplex", k)
        weights["junction.weight"] = fc1
    else:
        if fc2 is None or fc2.dim() != 2:
            raise CheckpointError(f"{p}: a learnable-head model needs fc2.weight, its classifier")
        if fc2.shape[1] != 512:
            raise CheckpointError(
                f"{p}: fc2.weight reads {fc2.shape[1]}-d features; the released learnable-head "
                "model reads the 512-d backbone output (is this a d-Simplex file?)"
            )
        if fc1 is not None:
            notes.append(
                "fc1.weight ignored: the released learnable-head model has no junction "
                "(its feature is the pooled backbone output)"
            )
        n, source = _pick_classes(p, classes, _classes_in_args(obj), int(fc2.shape[0]))
        spec = ModelSpec(BACKBONE, in_channels, 512, "learnable", n, junction=False)
        weights["head.w"] = fc2

    model = build_model(spec)
    model.add_classes(range(n), "provider")  # class c -> row c
    state = model.state_dict()
    for key, value in weights.items():
        state[key] = value.to(state[key].dtype)
    model.load_state_dict(state, strict=True)
    return Conversion(model.eval(), n, source, notes, dropped)


def _pick_classes(
    p: Path, given: int | None, in_args: int | None, in_weights: int | None
) -> tuple[int, str]:
    told = [(v, s) for v, s in ((in_weights, "fc2.weight"), (in_args, "args.classes_at_task")) if v]
    if given is not None:
        for v, s in told:
            if v != given:
                raise InputError(f"--classes {given} but {p} says {v} ({s})")
        return given, "--classes"
    if told:
        return told[0]
    raise InputError(
        f"{p} does not tell how many classes its model was trained on: pass --classes N "
        "(the released ckpt_0, ckpt_1, ckpt_2 know 100, 300 and 600 ImageNet32 classes)"
    )
