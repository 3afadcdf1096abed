"""``compatkit check OLD.pt NEW.pt --query Q --gallery G``: the upgrade gate (exit 0 / 1 / 2)."""

from __future__ import annotations

import argparse

HELP = (
    "may NEW query a gallery embedded by OLD? the 2x2 compatibility matrix and a verdict: "
    "exit 0 compatible, 1 not, 2 bad input"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..upgrade.gate import METRICS, SCOPES

    p.add_argument(
        "old",
        metavar="OLD.pt",
        help="the model that embedded the gallery: a compatkit checkpoint, or a TorchScript, "
        ".pt2 or ONNX model with its preprocessing JSON beside it",
    )
    p.add_argument("new", metavar="NEW.pt", help="the candidate model (either kind)")
    p.add_argument("--query", required=True, metavar="Q", help="query images (folder or dataset)")
    p.add_argument(
        "--gallery", required=True, metavar="G", help="gallery images (folder or dataset)"
    )
    p.add_argument(
        "--metric",
        default="recall@1",
        choices=METRICS,
        help="the metric that decides the exit code (default recall@1)",
    )
    p.add_argument(
        "--scope",
        default="all",
        choices=SCOPES,
        help="queries that decide: all (default), old (classes OLD was trained on), unseen, "
        "or each (every non-empty one must pass)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="PP",
        help="pass when new/old > old/old - PP percentage points (default 0: the strict criterion)",
    )
    p.add_argument(
        "--require-improvement",
        action="store_true",
        help="also require new/new > old/old (the upgrade must be better after a backfill)",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument(
        "--record",
        metavar="IDX",
        help="record the verdict with this gallery (compatkit index; checked before the run)",
    )
    p.add_argument(
        "--collection", metavar="NAME", help="with --record: the Milvus collection of IDX"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="with --record: seconds a Milvus server may take to answer (default 10)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument(
        "--workers", type=int, default=0, help="processes decoding image files (default 0)"
    )
    p.add_argument(
        "--strict", action="store_true", help="stop at an unreadable image instead of skipping it"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def main(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..errors import InputError
    from ..upgrade.gate import render, run_check

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    if args.record:  # a damaged, foreign or unreachable gallery is refused before the run
        from ..upgrade.index import Gallery, load_checks

        with Gallery.open(args.record, args.collection, args.timeout) as g:
            load_checks(g)
    verdict = run_check(
        args.old,
        args.new,
        args.query,
        args.gallery,
        metric=args.metric,
        scope=args.scope,
        tolerance=args.tolerance,
        require_improvement=args.require_improvement,
        device=args.device,
        batch_size=args.batch_size,
        log=say,
        workers=args.workers,
        strict=args.strict,
    )
    if args.record:
        from ..upgrade.index import record_check

        record_check(args.record, verdict, args.collection, args.timeout)
        say(f"recorded the verdict in {args.record}")
    if args.json:
        print(json.dumps(verdict, indent=1))
    else:
        print(render(verdict))
    return 0 if verdict["compatible"] else 1
