"""``compatkit embed MODEL DATA --out FEATS``: a collection's embeddings as ``.npy``."""

from __future__ import annotations

import argparse

HELP = (
    "embed a collection of images with any model (compatkit or TorchScript/.pt2/ONNX): "
    "FEATS.npy, FEATS.ids.txt, FEATS.labels.npy and FEATS.json"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a compatkit checkpoint, or a TorchScript, .pt2 or ONNX model with its JSON",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="image folder (class sub-folders or flat), a .csv/.jsonl list, or a dataset name",
    )
    p.add_argument("--out", required=True, metavar="FEATS", help="FEATS.npy and its companions")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--split", help="the split of DATA (train or test)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument(
        "--workers", type=int, default=0, help="processes decoding image files (default 0)"
    )
    p.add_argument(
        "--strict", action="store_true", help="stop at an unreadable image instead of skipping it"
    )
    p.add_argument(
        "--follow-links",
        action="store_true",
        help="include class folders that are symlinks out of the data folder",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    import sys

    from ..errors import InputError
    from ..runtime.log import RunLog
    from ..upgrade.embed import load_embedder
    from ..upgrade.embed_files import embed_to_files, output_paths

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = output_paths(args.out)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.force:
        raise InputError(f"--out: {existing[0]} exists; pass --force to overwrite")
    emb = load_embedder(args.model)
    log = RunLog(None, quiet=args.quiet)
    try:
        doc = embed_to_files(
            emb,
            args.data,
            args.out,
            dtype=args.dtype,
            split=args.split,
            batch_size=args.batch_size,
            workers=args.workers,
            strict=args.strict,
            follow_links=args.follow_links,
            device=args.device,
            log=log,
        )
    finally:
        log.close()
    line = (
        f"wrote {doc['count']} x {doc['model']['feat_dim']} {doc['dtype']} features to "
        f"{paths['features']} ({doc['images_per_s']:.0f} images/s)"
    )
    if doc["unreadable"]["count"]:
        line += f"; {doc['unreadable']['count']} unreadable file(s) skipped"
    print(line, file=sys.stdout)
    return 0
