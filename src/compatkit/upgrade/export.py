"""A compatkit checkpoint exported for a serving stack (ONNX, TorchScript, .pt2).

The checkpoint's embedding network and its recorded preprocessing go to
:func:`compatkit.interop.export.export_model`, which writes the file, its JSON, and checks that
the file reloads as a foreign model with the checkpoint's features.
"""

from __future__ import annotations

import os

from ..errors import CheckpointError, InputError
from ..interop.export import Exported, export_model
from .embed import CheckpointEmbedder, load_embedder

__all__ = ["export_checkpoint"]


def export_checkpoint(
    checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike, name: str | None = None
) -> Exported:
    """Export ``checkpoint`` to ``out`` as ``fmt``; ``name`` goes into the JSON (default: the
    file's stem)."""
    emb = load_embedder(checkpoint)
    if not isinstance(emb, CheckpointEmbedder):
        raise InputError(f"{checkpoint}: already a {emb.meta['format']} model; export a checkpoint")
    if emb.preprocess is None:
        raise CheckpointError(
            f"checkpoint {checkpoint}: records no input size, so the exported model's input "
            "cannot be described"
        )
    pre = emb.preprocess
    if name:
        pre = type(pre)(pre.input_size, pre.resize, pre.interpolation, pre.mean, pre.std, name)
    source = {"checkpoint": str(checkpoint), "fingerprint": emb.fingerprint}
    return export_model(emb.model, pre, fmt, out, source)
