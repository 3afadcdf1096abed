"""A deployed embedding model that compatkit did not train: TorchScript, ``.pt2`` or ONNX.

The model file comes with its preprocessing in a JSON file beside it (same stem,
``.json``; :class:`~compatkit.data.preprocess.Preprocess`), e.g.::

    {"input_size": [3, 224, 224], "resize": 256, "crop": 224, "interpolation": "bilinear",
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "name": "prod-v1"}

It takes a float batch ``(N, C, H, W)`` scaled by ``mean``/``std`` and returns one feature
vector per image ``(N, d)``. It is identified by its file's SHA-256 (the fingerprint a
gallery records) and read without unpickling anything (:mod:`.archive` inspects the
pickles a TorchScript or ``.pt2`` archive carries before torch reads them; an ONNX file
holds none, and its external data may only live beside it). Loading runs the model once on
a blank batch to learn ``d`` and whether its batch size is fixed (then it is fed in chunks
of that size, the last one padded).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import file_sha256
from ..data.preprocess import Preprocess
from ..errors import CheckpointError, CompatkitError
from .archive import scan_pt2, scan_torchscript

__all__ = ["FOREIGN_FORMATS", "ForeignModel", "foreign_format", "load_foreign", "sidecar"]

FOREIGN_FORMATS = ("torchscript", "pt2", "onnx")
_PIP = {"onnx": "pip install 'compatkit[onnx]'"}


def sidecar(path: str | os.PathLike) -> Path:
    """The preprocessing JSON of a model file: same folder and stem, ``.json``."""
    return Path(path).with_suffix(".json")


def foreign_format(path: str | os.PathLike) -> str | None:
    """``torchscript``, ``pt2`` or ``onnx`` when the file is one (by content, then suffix);
    None for anything else (a compatkit checkpoint, a ``torch.save`` file)."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return "onnx"
    if not p.is_file() or not zipfile.is_zipfile(p):
        return None
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "pt2"
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    return None


class ForeignModel:
    """A loaded foreign model: ``model(x)`` maps a float batch to ``(N, d)`` float32 features."""

    def __init__(self, path: Path, fmt: str, pre: Preprocess, run: Any, meta: dict) -> None:
        self.path, self.format, self.preprocess, self._run = path, fmt, pre, run
        self.meta = meta
        """The JSON beside the model, as read (it may hold keys beyond the preprocessing)."""
        self.sha256 = file_sha256(path)
        self.fixed_batch: int | None = None
        self.feat_dim = self._probe()

    @property
    def name(self) -> str:
        return self.preprocess.name or self.path.stem

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(x)
        if isinstance(out, list | tuple):
            if len(out) != 1:
                raise CheckpointError(
                    f"{self.path}: the model returns {len(out)} outputs; it must return one "
                    "feature vector per image"
                )
            out = out[0]
        out = torch.as_tensor(out)
        return out.reshape(out.shape[0], -1) if out.ndim == 4 and out.shape[2:] == (1, 1) else out

    def _probe(self) -> int:
        """Feature size from a blank batch of 2 (or 1, for a model exported at batch 1)."""
        c, h, w = self.preprocess.input_size
        last: Exception | None = None
        for n in (2, 1):
            try:
                with torch.no_grad():
                    out = self._forward(torch.zeros(n, c, h, w))
            except CompatkitError:
                raise
            except Exception as e:  # the runtime's own error for a shape it refuses
                last = e
                continue
            if out.ndim != 2 or out.shape[0] != n or not out.is_floating_point():
                raise CheckpointError(
                    f"{self.path}: on a batch of {n} images of {c}x{h}x{w} the model returns "
                    f"{out.dtype} {tuple(out.shape)}, not one feature vector per image (N, d)"
                )
            if n == 1:
                self.fixed_batch = 1
            return int(out.shape[1])
        cause = " ".join(str(last).split())[:200]
        raise CheckpointError(
            f"{self.path}: the model does not run on input {c}x{h}x{w} as its JSON "
            f"{sidecar(self.path)} says ({type(last).__name__}: {cause})"
        )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a float batch on the CPU (fp32), whatever the batch's size."""
        x = x.detach().float().cpu()
        if self.fixed_batch is None:
            return self._forward(x).float()
        b, parts = self.fixed_batch, []
        for s in range(0, len(x), b):
            chunk = x[s : s + b]
            pad = b - len(chunk)
            if pad:
                chunk = torch.cat([chunk, chunk.new_zeros(pad, *chunk.shape[1:])])
            parts.append(self._forward(chunk).float()[: b - pad])
        return torch.cat(parts)


def _read_json(path: Path) -> tuple[Preprocess, dict]:
    js = sidecar(path)
    example = (
        '{"input_size": [3, 224, 224], "resize": 256, "crop": 224, "interpolation": '
        '"bilinear", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "name": "v1"}'
    )
    if not js.is_file():
        raise CheckpointError(
            f"{path}: a foreign model needs its preprocessing in {js}, e.g. {example}"
        )
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{js}: not valid JSON ({e})") from None
    try:
        return Preprocess.from_dict(meta), meta
    except CompatkitError as e:
        raise CheckpointError(f"{js}: {e}") from None


def _torchscript(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own notice
            m = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"{path}: not a loadable TorchScript archive ({e})") from None
    return m.eval()


def _pt2(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.load(str(path))
        return ep.module()
    except Exception as e:
        cause = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path}: not a loadable torch.export archive ({cause})") from None


def _onnx(path: Path) -> Any:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError(
            f"{path}: reading an ONNX model needs onnx and onnxruntime: {_PIP['onnx']}"
        ) from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise CheckpointError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    here = path.resolve().parent
    for t in proto.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                target = (here / kv.value).resolve()
                if here not in target.parents:
                    raise CheckpointError(
                        f"{path}: refusing to load: its weights point to {kv.value!r}, outside "
                        "the model's folder (an ONNX file may only read data beside it)"
                    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        cause = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path}: onnxruntime cannot load it ({cause})") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise CheckpointError(f"{path}: the model takes {len(inputs)} inputs; it must take one")
    name = inputs[0].name

    def run(x: torch.Tensor) -> np.ndarray:
        return sess.run(None, {name: np.ascontiguousarray(x.numpy(), dtype=np.float32)})

    return run


def load_foreign(path: str | os.PathLike, fmt: str | None = None) -> ForeignModel:
    """Load a foreign model and its JSON (see the module docstring); one CheckpointError line
    for anything wrong: a missing JSON, a hostile archive, a model that does not run."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    fmt = fmt or foreign_format(p)
    if fmt not in FOREIGN_FORMATS:
        raise CheckpointError(
            f"{p}: not a TorchScript archive, a torch.export archive (.pt2) or an ONNX file"
        )
    if fmt == "torchscript":  # before anything else reads the file
        scan_torchscript(p)
    elif fmt == "pt2":
        scan_pt2(p)
    pre, meta = _read_json(p)
    loader = {"torchscript": _torchscript, "pt2": _pt2, "onnx": _onnx}[fmt]
    return ForeignModel(p, fmt, pre, loader(p), meta)
