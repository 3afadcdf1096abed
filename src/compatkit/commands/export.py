"""``compatkit export MODEL.pt --format onnx|torchscript|pt2 --out FILE``."""

from __future__ import annotations

import argparse

HELP = (
    "export a model's embedding network (image in, unit feature out) as ONNX, TorchScript or "
    "torch.export .pt2, with its preprocessing JSON beside it"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.pt", help="a compatkit checkpoint")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "pt2"))
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--name", help="the model's name in the JSON (default: the file's stem)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..interop.export import TOLERANCE
    from ..interop.foreign import sidecar
    from ..upgrade.export import export_checkpoint

    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"--out {out} exists; pass --force to overwrite it")
    if (
        out.resolve() == Path(args.model).resolve()
        or sidecar(out).resolve() == Path(args.model).resolve()
    ):
        raise InputError("--out must differ from the model and its JSON")
    res = export_checkpoint(args.model, args.format, out, args.name)
    print(
        f"wrote {res.path} ({res.format}) and {res.json_path}; reloaded as a foreign model, its "
        f"features differ from the checkpoint's by at most {res.max_diff:.1e} (limit {TOLERANCE:g})"
    )
    return 0
