"""``compatkit train DATA --out MODEL.pt [--old OLD.pt] [options]``."""

from __future__ import annotations

import argparse

from . import add_log_argument

HELP = "train a model on your images, or its compatible successor against an old model (--old)"

# Flags that map one to one onto TrainOptions fields (None = not given on the command line).
_FLAGS = (
    ("--method", str, "registered method (default: hoc with --old; cross-entropy without)"),
    ("--head", str, "simplex (default), etf or learnable"),
    ("--backbone", str, "smallcnn (default), smallcnn_wide, resnet18, resnet18_cifar, timm:, tv:"),
    (
        "--num-classes",
        int,
        "K, vertices of the fixed head (default: old K, else max(16, 2 x classes))",
    ),
    ("--image-size", int, "square side in pixels (default: the old model's, else the data's)"),
    ("--init", str, "successor start: old (default) or scratch"),
    ("--epochs", int, "passes over the data (default 10)"),
    ("--lr", float, "learning rate (default 0.05 from scratch, 0.001 from the old weights)"),
    ("--batch-size", int, "images per step (default 128)"),
    ("--val-fraction", float, "share of each class held out for validation (default 0)"),
    ("--seed", int, "seed of weights, batches, augmentation and split (default 0)"),
    ("--device", str, "auto (default), cpu, cuda, cuda:N"),
    ("--weights", str, "start the backbone from this file (safetensors or a state dict)"),
    ("--anchor", str, "images whose OLD features the successor keeps (folder, list, dataset)"),
    ("--anchor-weight", float, "weight of the anchor term (default 1)"),
    ("--anchor-term", str, "fd (1 - cos to OLD's feature, default) or method (its own term)"),
    ("--workers", int, "processes decoding image files (default 0)"),
    (
        "--memory-budget",
        str,
        "bytes the decoded images may take in memory before they stream, e.g. 512M, 2G "
        "(default: a quarter of the available memory)",
    ),
    ("--threads", int, "CPU threads for torch (default: torch's choice)"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "data",
        metavar="DATA",
        help="image folder (one sub-folder per class) or a "
        "dataset name such as fashion-mnist or fashion-mnist:test",
    )
    p.add_argument("--out", required=True, metavar="MODEL.pt", help="checkpoint to write")
    p.add_argument(
        "--old",
        metavar="OLD",
        help="train the successor of this model: a compatkit checkpoint, or a TorchScript, "
        ".pt2 or ONNX model with its preprocessing JSON (the successor lives in its space)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="start a timm:/tv: backbone from the library's pretrained weights (downloads)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="stop at an unreadable image instead of skipping it",
    )
    loading = p.add_mutually_exclusive_group()
    loading.add_argument(
        "--in-memory",
        dest="loading",
        action="store_const",
        const="memory",
        default=None,
        help="decode every image once and train from memory (default: when it fits the budget)",
    )
    loading.add_argument(
        "--stream",
        dest="loading",
        action="store_const",
        const="stream",
        help="read the image files every epoch with --workers processes (default: when the "
        "decoded images exceed the budget)",
    )
    for flag, tp, text in _FLAGS:
        p.add_argument(flag, type=tp, default=None, help=text)
    p.add_argument("--config", metavar="FILE.yaml", help="options as YAML (flags win over it)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any option, or a method option as METHOD.KEY (e.g. --set hoc.lam=0.3); repeatable",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_log_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def resolve_options(args: argparse.Namespace):
    """Defaults < --config file < --set < explicit flags; validated."""
    from pathlib import Path

    import yaml

    from ..config import parse_overrides
    from ..errors import ConfigError
    from ..methods import METHODS, load_all
    from ..upgrade.train import TrainOptions

    data: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"config file {path} is not valid YAML: {' '.join(str(e).split())}"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of option: value")
    load_all()
    for key, value in parse_overrides(args.overrides):
        head, _, rest = key.partition(".")
        if rest and head in METHODS:
            data.setdefault("method_options", {}).setdefault(head, {})[rest] = value
        elif rest:
            raise ConfigError(
                f"--set {key}: {head!r} is not a method; method options are METHOD.KEY"
            )
        else:
            data[key] = value
    for flag in (*(f for f, _, _ in _FLAGS), "--pretrained", "--strict", "--loading"):
        dest = flag[2:].replace("-", "_")
        if getattr(args, dest) is not None:
            data[dest] = getattr(args, dest)
    return TrainOptions.from_dict(data, f"options ({args.config})" if args.config else "options")


def main(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..errors import ConfigError
    from ..runtime.log import RunLog
    from ..tracking.train import track_train
    from ..upgrade.train import train_model

    opts = resolve_options(args)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"--out {out} exists; pass --force to overwrite it")
    if args.old and Path(args.old).resolve() == out.resolve():
        raise ConfigError("--out must differ from --old (the old model is what the gallery holds)")
    log = RunLog(None, quiet=args.quiet)
    try:
        with track_train(args.log, out, opts) as tracked:
            res = train_model(args.data, out, opts, old=args.old, log=log)
            tracked(res.extra)
    finally:
        log.close()
    x = res.extra
    names = x["class_names"]
    from ..checkpoint import read_contract

    sha = read_contract(out)["sha256"]
    d = x["data"]
    how = {"memory": "in memory", "stream": "streamed"}[d["loading"]]
    line = f"wrote {out}: {len(names)} classes, {d['images']} images ({how}"
    line += f", {d['skipped']} unreadable skipped), " if d["skipped"] else "), "
    line += x["method"]
    if x["old"]:
        line += f", successor of {x['old']['path']} ({x['old']['fingerprint'][:12]})"
    if x["val_accuracy"]:
        line += f", validation accuracy {x['val_accuracy'][-1]:.2f} %"
    print(f"{line}, {x['seconds']:.0f} s, fingerprint {sha[:12]}", file=sys.stdout)
    return 0
