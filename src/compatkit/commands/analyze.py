"""``compatkit analyze RUN_DIR``: Definition 1 and stationarity on a run's models, and figures.

Paper: Biondi et al., CVPR 2024, Definition 1 (from BCT), Theorem 1 (a
stationary representation satisfies Definition 1 in expectation) and
Corollary 1 (no representation satisfies it for every pair); Figures 3-5.
See ``compatkit.analysis.run`` for what is measured, ``compatkit.analysis.figures`` for the plots
and ``compatkit.analysis.demo`` for the K = 3 demo (``--simplex-demo OUT_DIR``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError

HELP = "check Definition 1 and stationarity on a run's models; paper figures; K=3 simplex demo"


def _seed(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seed takes a run seed or 'all', got {value!r}"
        ) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help="a directory written by `compatkit run`")
    p.add_argument(
        "--pairs",
        type=int,
        default=100_000,
        metavar="N",
        help="sample pairs per group (same / different class) and model pair; larger groups "
        "are sampled uniformly (default 100000)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        action="append",
        default=None,
        metavar="S",
        help="run seed to analyse (repeatable, or 'all'; default: the run's first seed)",
    )
    p.add_argument("--methods", nargs="+", help="only these methods (default: all of the run)")
    p.add_argument(
        "--metric",
        choices=["cosine", "euclidean", "both"],
        default="both",
        help="distance of Definition 1, on L2-normalised features (default both)",
    )
    p.add_argument(
        "--no-replacement-run",
        metavar="OTHER_RUN_DIR",
        help="the same scenario run with no_replacement: true; adds the two-panel AA_t figure",
    )
    p.add_argument("--no-plots", action="store_true", help="numbers only, no PNG files")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads (default 1: the tensors are small, more threads mostly wait)",
    )
    p.add_argument("--json", action="store_true", help="print the analysis as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    demo = p.add_argument_group("K=3 simplex demo (independent of RUN_DIR)")
    demo.add_argument(
        "--simplex-demo",
        metavar="OUT_DIR",
        type=Path,
        help="train tiny 2-D models (d-Simplex vs learnable) and plot their features",
    )
    demo.add_argument("--demo-classes", type=int, nargs=3, metavar="C", help="three dataset labels")
    demo.add_argument(
        "--demo-per-class",
        type=int,
        nargs=2,
        metavar=("OLD", "NEW"),
        help="training images per class of the first and of the updated models",
    )
    demo.add_argument("--demo-test-per-class", type=int, metavar="N", help="held-out images")
    demo.add_argument("--demo-epochs", type=int, metavar="E", help="epochs per model")
    demo.add_argument("--demo-dataset", help="dataset of the demo (default fashion-mnist)")


def _log(args: argparse.Namespace):
    if args.quiet or args.json:
        return lambda _: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def _seeds(values: list | None) -> list[int] | str | None:
    if not values:
        return None
    if "all" in values:
        return "all"
    return list(dict.fromkeys(values))


def _print_summary(result: dict) -> None:
    """A short table per method: pairs where each inequality holds in expectation."""
    header = ["method", "seed", "metric", "same", "diff", "both", "consec.", "across repl."]
    rows = []
    for m, entry in result["methods"].items():
        for seed, r in entry["seeds"].items():
            for metric, s in r["summary"].items():
                a, c, x = s["all"], s["consecutive"], s["across_replacement"]
                rows.append(
                    [
                        m,
                        seed,
                        metric,
                        f"{a['same_holds']}/{a['pairs']}",
                        f"{a['diff_holds']}/{a['pairs']}",
                        f"{a['both_hold']}/{a['pairs']}",
                        f"{c['both_hold']}/{c['pairs']}",
                        f"{x['both_hold']}/{x['pairs']}" if x["pairs"] else "-",
                    ]
                )
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("Definition 1 in expectation (model pairs k < t where the inequality holds)")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    seed0 = str(result["settings"]["seeds"][0])
    print(f"\nStationarity (seed {seed0}): angle to vertex (deg) / class spread, per model")
    for m, entry in result["methods"].items():
        st = entry["seeds"][seed0]["stationarity"]
        cells = []
        for s in st:
            ang = s["mean_angle_to_vertex_deg"]
            star = "*" if s["task"] in result["replacement_tasks"] else ""
            a = "n/a" if ang is None else f"{ang:.1f}"
            cells.append(f"{s['task'] + 1}{star}: {a}/{s['mean_spread']:.3f}")
        print(f"  {m}: " + ", ".join(cells))
    print()
    for line in result["verdicts"]:
        print(line)
    for line in result.get("stationarity_verdicts") or []:
        print(line)
    for note in result.get("notes") or []:
        print(f"note: {note}")


def _demo(args: argparse.Namespace) -> dict:
    from ..analysis.demo import DemoConfig, simplex_demo

    cfg = DemoConfig()
    if args.demo_classes:
        cfg.classes = tuple(args.demo_classes)
    if args.demo_per_class:
        cfg.old_per_class, cfg.new_per_class = args.demo_per_class
    if args.demo_test_per_class:
        cfg.test_per_class = args.demo_test_per_class
    if args.demo_epochs:
        cfg.epochs = args.demo_epochs
    if args.demo_dataset:
        cfg.dataset = args.demo_dataset
    cfg.threads = args.threads
    return simplex_demo(args.simplex_demo, cfg, log=_log(args))


def _print_demo(res: dict) -> None:
    print(f"K=3 simplex demo ({res['seconds']:.1f}s):")
    for name, s in res["models"].items():
        drift = s["centre_drift_from_old_deg"]
        line = (
            f"  {name:20s} centre to {'vertex' if s['head'] == 'simplex' else 'own row'} "
            f"{s['mean_direction_angle_deg']:5.1f} deg, spread {s['mean_spread']:.3f}"
        )
        if not name.endswith("/old"):
            line += f", centre drift from the first model {drift:5.1f} deg"
        print(line)
    for name, d in res["definition1_vs_old"].items():
        print(
            f"  Definition 1, {name} vs first model (cosine): same-class "
            f"{'holds' if d['same']['holds_in_expectation'] else 'fails'} in expectation "
            f"(per pair {d['same']['frac']:.2f}), different-class "
            f"{'holds' if d['diff']['holds_in_expectation'] else 'fails'} "
            f"(per pair {d['diff']['frac']:.2f})"
        )
    for f in res["files"]:
        print(f"wrote {f}")


def main(args: argparse.Namespace) -> int:
    # Argument errors first: they need no torch import, so they answer at once.
    if args.run_dir is None and args.simplex_demo is None:
        raise InputError("give a RUN_DIR to analyse, or --simplex-demo OUT_DIR (or both)")
    if args.run_dir is not None and not Path(args.run_dir).is_dir():
        raise InputError(f"run directory not found: {args.run_dir}")
    if args.pairs < 1:
        raise InputError(f"--pairs must be >= 1, got {args.pairs}")
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")

    from ..analysis.run import ANALYSIS_FILE, METRICS, analyze_run

    payload: dict = {}
    if args.run_dir is not None:
        metrics = METRICS if args.metric == "both" else (args.metric,)
        result = analyze_run(
            args.run_dir,
            methods=args.methods,
            seeds=_seeds(args.seed),
            metrics=metrics,
            max_pairs=args.pairs,
            no_replacement_run=args.no_replacement_run,
            plots=not args.no_plots,
            log=_log(args),
            threads=args.threads,
        )
        payload["analysis"] = result
        if not args.json:
            _print_summary(result)
            run_dir = Path(args.run_dir)
            print(f"\nwrote {run_dir / ANALYSIS_FILE}, {run_dir / 'report.md'}")
            for p in result["plots"]:
                print(f"wrote {run_dir / p}")
    if args.simplex_demo is not None:
        res = _demo(args)
        payload["simplex_demo"] = res
        if not args.json:
            if args.run_dir is not None:
                print()
            _print_demo(res)
    if args.json:
        json.dump(payload, sys.stdout)
        sys.stdout.write("\n")
    return 0
