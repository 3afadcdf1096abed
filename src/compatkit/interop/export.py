"""Export a compatkit model for a serving stack: ONNX, TorchScript or ``torch.export`` (.pt2).

The exported network is the embedding path only, image in, unit feature out:
``F.normalize(features(x))`` on a float batch ``(N, C, H, W)`` already resized, cropped and
scaled as the model's preprocessing says (the head is left out: a service ranks by the
feature). The preprocessing JSON is written beside the file (same stem, ``.json``), so the
file loads back into compatkit as a foreign model (:mod:`.foreign`). Every export is checked
by loading it back that way and comparing its features with the checkpoint's on random
inputs: a file whose features differ by more than ``TOLERANCE`` is not kept.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import CheckpointError, InputError
from ..runtime.files import atomic_write, atomic_write_text
from .foreign import load_foreign, sidecar

__all__ = ["EXPORT_FORMATS", "TOLERANCE", "EmbeddingNet", "Exported", "export_model"]

EXPORT_FORMATS = ("onnx", "torchscript", "pt2")
TOLERANCE = 1e-4
"""Largest difference allowed between an exported file's features and the checkpoint's."""
_OPSET = 17  # ONNX opset: onnxruntime >= 1.14 runs it


def example_dim(net: nn.Module, example: torch.Tensor) -> int:
    """The feature dimension ``net`` gives for ``example``."""
    with torch.no_grad():
        return net(example).shape[1]


class EmbeddingNet(nn.Module):
    """The model's feature, L2-normalised: what a gallery stores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.features(x), dim=1)


@dataclass
class Exported:
    path: Path
    json_path: Path
    format: str
    max_diff: float
    """Largest absolute difference between the file's features and the checkpoint's."""


def _write(fmt: str, net: nn.Module, example: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter notes about constant shapes
        if fmt == "torchscript":
            traced = torch.jit.trace(net, example, check_trace=False)
            atomic_write(out, lambda f: torch.jit.save(traced, f))
        elif fmt == "onnx":
            try:
                import onnx  # noqa: F401
            except ImportError:
                raise InputError(
                    "--format onnx needs onnx and onnxruntime: pip install 'compatkit[onnx]'"
                ) from None

            def onnx_bytes(f) -> None:
                torch.onnx.export(
                    net,
                    (example,),
                    f,
                    input_names=["image"],
                    output_names=["feature"],
                    dynamic_axes={"image": {0: "batch"}, "feature": {0: "batch"}},
                    opset_version=_OPSET,
                    dynamo=False,
                )

            atomic_write(out, onnx_bytes)
        else:
            batch = torch.export.Dim("batch", min=1)
            ep = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
            atomic_write(out, lambda f: torch.export.save(ep, f))


def export_model(
    model: nn.Module,
    pre: Preprocess,
    fmt: str,
    out: str | os.PathLike,
    source: dict | None = None,
) -> Exported:
    """Export ``model``'s embedding network to ``out`` (format ``fmt``) with its JSON.

    ``pre``: the preprocessing the model expects (written to the JSON, its ``name`` defaulting
    to the file's stem); ``source``: where the model came from (recorded in the JSON).
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"--format must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    out = Path(out)
    if not pre.name:
        pre = type(pre)(pre.input_size, pre.resize, pre.interpolation, pre.mean, pre.std, out.stem)
    net = EmbeddingNet(model.cpu().eval()).eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, *pre.input_size, generator=gen)
    _write(fmt, net, example, out)
    doc = {
        **pre.to_dict(),
        "output": "L2-normalised feature (N, d)",
        "feat_dim": int(example_dim(net, example)),
        "source": dict(source or {}),
    }
    js = atomic_write_text(sidecar(out), json.dumps(doc, indent=1) + "\n")
    try:
        fm = load_foreign(out)
        x = torch.randn(5, *pre.input_size, generator=gen)
        with torch.no_grad():
            want = net(x)
        got = F.normalize(fm(x), dim=1)
        diff = float((got - want).abs().max())
    except Exception:
        out.unlink(missing_ok=True)
        js.unlink(missing_ok=True)
        raise
    if not diff <= TOLERANCE:
        out.unlink(missing_ok=True)
        js.unlink(missing_ok=True)
        raise CheckpointError(
            f"{out}: the exported {fmt} model's features differ from the checkpoint's by "
            f"{diff:.2e} (> {TOLERANCE:g}); not kept"
        )
    return Exported(out, js, fmt, diff)
