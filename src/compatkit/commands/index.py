"""``compatkit index build|search|backfill|curve|info|optimize``: the versioned gallery of a
retrieval service in a vector database (see docs/upgrade-index.md).

``IDX`` picks the engine: a folder (or object-store URI) is a LanceDB database, the
default; a path ending in ``.db`` is a Milvus Lite file; ``http://HOST:19530`` with
``--collection NAME`` is a Milvus server or cluster.

- ``build MODEL DATA --out IDX``: embed a gallery and store it, each vector with the
  fingerprint of the model that made it;
- ``search IDX QUERY --model M``: the nearest gallery items of each query image, after
  the compatibility gate (refused, unless ``--force``, when M's contract differs from the
  gallery's versions or no recorded ``compatkit check`` found M compatible with them);
- ``backfill IDX --model NEW --fraction F --policy random|class|uncertainty``: re-embed
  items with NEW until a fraction F of the gallery is NEW's; atomic per chunk, resumable,
  spread over workers with ``--plan-only`` then ``--worker I/N`` (or ``--workers N`` here);
- ``curve IDX --old OLD --new NEW QUERY``: retrieval accuracy against the backfilled
  fraction for each policy, without touching the gallery;
- ``info IDX``: versions, counts, vector index, pending backfill, recorded checks
  (``--recall QUERY --model M``: recall@10 of the approximate index against exact);
- ``optimize IDX --index-type TYPE``: build the approximate vector index.
"""

from __future__ import annotations

import argparse
import json
import sys

from .backfill import add_backfill_parser

HELP = "build, search, backfill and plan a versioned gallery (index) of embeddings"

_SUBCOMMANDS = ("build", "search", "backfill", "curve", "info", "optimize")


def _common(p: argparse.ArgumentParser, embeds: bool = True) -> None:
    p.add_argument(
        "--collection",
        metavar="NAME",
        help="Milvus collection (required for a server; default 'gallery' in a .db file)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a Milvus server may take to answer (default 10)",
    )
    if embeds:
        p.add_argument(
            "--batch-size", type=int, default=256, help="images per forward pass (default 256)"
        )
        p.add_argument(
            "--device",
            default="auto",
            help="where models run: auto (default: cuda when available), cpu, cuda, cuda:N",
        )
    # After the sub-command too (`compatkit index search ... --debug`); SUPPRESS keeps a
    # global `compatkit --debug index ...` from being reset by this parser's default.
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an unexpected error, print the full traceback (for a bug report)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="index_command", metavar="SUBCOMMAND")
    sub.required = True

    b = sub.add_parser("build", help="embed a gallery with a model and store it as an index")
    b.add_argument("model", metavar="MODEL", help="checkpoint (.pt) that embeds the gallery")
    b.add_argument(
        "data",
        metavar="DATA",
        help="gallery images: an image folder (one sub-folder per class) or a dataset "
        "name with optional split (fashion-mnist:test)",
    )
    b.add_argument(
        "--out",
        required=True,
        metavar="IDX",
        help="the gallery to create: a folder (LanceDB), a .db file (Milvus Lite) or "
        "http://HOST:19530 with --collection (Milvus)",
    )
    b.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float16", "float32"),
        help="vector precision (auto: float16, float32 on Milvus Lite which has no float16)",
    )
    b.add_argument(
        "--index-type",
        metavar="TYPE",
        help="also build an approximate vector index (LanceDB: IVF_PQ, IVF_HNSW_SQ, ...; "
        "Milvus: IVF_FLAT, HNSW, ...); search stays exact unless asked with --approx",
    )
    _common(b)

    s = sub.add_parser("search", help="nearest gallery items of query images (gated)")
    s.add_argument("index", metavar="IDX", help="the gallery (written by index build)")
    s.add_argument("query", metavar="QUERY", help="query images (folder or dataset[:split])")
    s.add_argument("--model", required=True, metavar="M", help="checkpoint that embeds queries")
    s.add_argument("-k", "--top-k", type=int, default=5, help="neighbours per query (default 5)")
    _approx(s)
    s.add_argument(
        "--force",
        action="store_true",
        help="search even when the compatibility gate refuses the model (warns)",
    )
    m = s.add_mutually_exclusive_group()
    m.add_argument(
        "--map",
        dest="with_map",
        action="store_const",
        const=True,
        help="compute mAP whatever it costs (default: when queries x gallery <= 1e9)",
    )
    m.add_argument(
        "--no-map",
        dest="with_map",
        action="store_const",
        const=False,
        help="skip mAP (a full ranking of the gallery per query)",
    )
    s.add_argument("--show", type=int, default=5, help="queries printed (default 5; all: -1)")
    s.add_argument(
        "--json", metavar="FILE", help="write every query's results as JSON ('-': stdout)"
    )
    _common(s)

    add_backfill_parser(sub, _common)

    c = sub.add_parser("curve", help="accuracy against the backfilled fraction, per policy")
    c.add_argument("index", metavar="IDX", help="the gallery (written by index build)")
    c.add_argument("query", metavar="QUERY", help="labelled query images")
    c.add_argument(
        "--old", required=True, help="checkpoint of the model the gallery was built with"
    )
    c.add_argument("--new", required=True, help="checkpoint of the new model")
    c.add_argument(
        "--policies",
        nargs="+",
        default=["random", "class", "uncertainty"],
        choices=("random", "class", "uncertainty"),
    )
    c.add_argument(
        "--steps", type=int, default=10, help="fractions 0, 1/steps, ..., 1 (default 10)"
    )
    c.add_argument("--seed", type=int, default=0, help="seed of the policies (as backfill's)")
    c.add_argument("--data", help="the gallery's images, if they moved since the build")
    c.add_argument(
        "--out",
        default="backfill-curve",
        help="folder for curve.png/.json/.md (default ./backfill-curve)",
    )
    c.add_argument("--json", action="store_true", help="print the curve as JSON")
    _common(c)

    i = sub.add_parser("info", help="versions, counts, pending backfill and recorded checks")
    i.add_argument("index", metavar="IDX", help="the gallery (written by index build)")
    i.add_argument(
        "--verify", action="store_true", help="scan every entity and check it against the records"
    )
    i.add_argument(
        "--recall",
        metavar="QUERY",
        help="measure recall@k of the approximate index against exact search on these images",
    )
    i.add_argument("--model", help="the model that embeds the --recall queries")
    i.add_argument("-k", "--top-k", type=int, default=10, help="k of --recall (default 10)")
    _approx(i, flag=False)
    i.add_argument("--json", action="store_true")
    _common(i)

    o = sub.add_parser("optimize", help="build the approximate vector index, or update it")
    o.add_argument("index", metavar="IDX", help="the gallery (written by index build)")
    o.add_argument(
        "--index-type",
        metavar="TYPE",
        help="index to build (replaces the current one); without it, bring the index up to "
        "date with vectors written since it was built (LanceDB)",
    )
    o.add_argument("--partitions", type=int, help="IVF partitions (default about sqrt(N))")
    o.add_argument("--sub-vectors", type=int, help="PQ sub-vectors (must divide the dimension)")
    _common(o, embeds=False)


def _approx(p: argparse.ArgumentParser, flag: bool = True) -> None:
    if flag:
        p.add_argument(
            "--approx",
            action="store_true",
            help="search with the gallery's approximate vector index (default: exact)",
        )
    p.add_argument("--nprobes", type=int, help="IVF partitions probed per query (approximate)")
    p.add_argument("--ef", type=int, help="HNSW candidate list size per query (approximate)")
    p.add_argument(
        "--refine", type=int, help="LanceDB refine factor: rerank refine x k with full vectors"
    )


def _params(args: argparse.Namespace) -> dict:
    return {"nprobes": args.nprobes, "ef": args.ef, "refine": args.refine}


def _where(args: argparse.Namespace) -> dict:
    return {"collection": args.collection, "timeout": args.timeout}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _warn(problems: list[str]) -> None:
    for p in problems:
        _log(f"warning: {p}")


def _build(args: argparse.Namespace) -> int:
    from ..upgrade.build import build_index

    info = build_index(
        args.model,
        args.data,
        args.out,
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
        index_type=args.index_type,
        log=_log,
        **_where(args),
    )
    v = info["versions"][0]
    print(
        f"index {args.out}: {info['count']} items, {info['dim']}-d {info['dtype']} "
        f"({info['engine']}), model {v['fingerprint'][:12]}"
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    from ..upgrade.search import search_index

    res = search_index(
        args.index,
        args.model,
        args.query,
        k=args.top_k,
        force=args.force,
        batch_size=args.batch_size,
        device=args.device,
        with_map=args.with_map,
        approx=args.approx,
        params=_params(args),
        **_where(args),
    )
    _warn([f"--force: {p}" for p in res["warnings"]])
    if args.json:
        text = json.dumps(res, indent=1, allow_nan=False)
        if args.json == "-":
            print(text)
            return 0
        from ..runtime.files import atomic_write_json

        atomic_write_json(args.json, res)
    print(f"{len(res['results'])} queries, top {res['k']} by cosine ({res['search']} search)")
    shown = res["results"] if args.show < 0 else res["results"][: args.show]
    for r in shown:
        print(f"query {r['id']}" + (f" [{r['class']}]" if r["class"] else ""))
        for rank, n in enumerate(r["neighbours"], 1):
            cls = f" [{n['class']}]" if n["class"] is not None else ""
            print(f"  {rank:>3}. {n['score']:.4f}  {n['id']}{cls}  v {n['version']}")
    m = res.get("metrics")
    if m:
        parts = [f"{k} {m[k]:.2f}%" for k in ("recall@1", "mAP") if m.get(k) is not None]
        if m.get("mAP_skipped"):
            parts.append(f"mAP skipped ({m['mAP_skipped']})")
        skipped = (
            f" ({m['unanswerable']} with a class not in the gallery left out)"
            if m["unanswerable"]
            else ""
        )
        print(f"{m['queries']} labelled queries: " + ", ".join(parts) + skipped)
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from .backfill import run_backfill

    return run_backfill(args, _log, _warn)


def _curve(args: argparse.Namespace) -> int:
    from ..upgrade.curve import backfill_curve, render_table, write_curve

    curve = backfill_curve(
        args.index,
        args.old,
        args.new,
        args.query,
        policies=args.policies,
        steps=args.steps,
        seed=args.seed,
        data=args.data,
        batch_size=args.batch_size,
        device=args.device,
        log=_log,
        **_where(args),
    )
    files = write_curve(curve, args.out)
    if args.json:
        print(json.dumps(curve, indent=1))
    else:
        print(render_table(curve))
        print(f"\nwritten: {files['plot']}, {files['json']}, {files['table']}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..upgrade.info import describe

    if args.recall and not args.model:
        raise InputError("--recall QUERY needs --model M (the model that embeds the queries)")
    info = describe(args.index, verify_all=args.verify, **_where(args))
    if args.recall:
        from ..upgrade.search import measure_recall

        info["recall"] = measure_recall(
            args.index,
            args.model,
            args.recall,
            k=args.top_k,
            params=_params(args),
            batch_size=args.batch_size,
            device=args.device,
            **_where(args),
        )
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(info["text"])
        r = info.get("recall")
        if r:
            print(
                f"recall@{r['k']} of {r['index_type']} against exact search: {r['recall']:.4f} "
                f"over {r['queries']} queries (exact {r['exact_s']:.2f} s, approximate "
                f"{r['approx_s']:.2f} s)"
            )
    return 1 if args.verify and info["problems"] else 0


def _optimize(args: argparse.Namespace) -> int:
    from ..upgrade.build import optimize_index

    params = {"partitions": args.partitions, "sub_vectors": args.sub_vectors}
    got = optimize_index(args.index, args.index_type, params, **_where(args))
    if got is None:
        print(f"index {args.index}: no approximate vector index (exact search only)")
    else:
        print(
            f"index {args.index}: {got['type']} vector index, {got['indexed']} vectors indexed, "
            f"{got['unindexed']} not yet"
        )
    return 0


def main(args: argparse.Namespace) -> int:
    return {
        "build": _build,
        "search": _search,
        "backfill": _backfill,
        "curve": _curve,
        "info": _info,
        "optimize": _optimize,
    }[args.index_command](args)
