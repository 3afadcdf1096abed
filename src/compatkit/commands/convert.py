"""``compatkit convert FILE --from iamcl2r --head simplex|learnable --out OUT.pt [--classes N]``."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "turn a model released with another codebase (the authors' iamcl2r) into a checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the released model file (a torch.save archive); never executed")
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=["iamcl2r"],
        help="the codebase that wrote FILE (iamcl2r: Biondi et al., CVPR 2024)",
    )
    p.add_argument(
        "--head",
        required=True,
        choices=["simplex", "learnable"],
        help="FILE's classifier: simplex (pretrained_models_ckpts/simplex/) or learnable",
    )
    p.add_argument("--out", required=True, help="the compatkit checkpoint to write")
    p.add_argument(
        "--classes",
        type=int,
        help="classes the model was trained on, when FILE does not tell (d-Simplex files: "
        "100, 300, 600 for the released ckpt_0, ckpt_1, ckpt_2)",
    )


def main(args: argparse.Namespace) -> int:
    from ..checkpoint import save_checkpoint
    from ..interop import convert_iamcl2r

    src, out = Path(args.file), Path(args.out)
    conv = convert_iamcl2r(src, args.head, args.classes)
    save_checkpoint(out, conv.model, extra=conv.extra(src))
    c = conv.model.contract()
    k = f"K={c['num_classes']}, " if args.head == "simplex" else ""
    print(
        f"{src} -> {out}: {args.head} head, {k}{c['backbone']}, {c['feat_dim']}-d features, "
        f"provider classes 0..{conv.classes - 1} on rows 0..{conv.classes - 1} "
        f"({conv.classes} from {conv.classes_from})"
    )
    for note in conv.notes:
        print(f"  note: {note}")
    if conv.dropped:
        print(f"  not converted (not weights): {', '.join(conv.dropped)}")
    return 0
