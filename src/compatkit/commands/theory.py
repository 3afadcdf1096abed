"""``compatkit theory``: the Monte Carlo model of Theorem 1 / Corollary 1, as a table and plots.

Paper: Biondi et al., CVPR 2024, Theorem 1 and Corollary 1 (see
``compatkit.analysis.theory`` for the model and what it shows). Several ``--r-new`` or
``--shift`` values run a sweep over every combination.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError

HELP = "Simulate Theorem 1: does Definition 1 hold in expectation and per pair?"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--K", type=int, default=10, help="number of classes (default 10)")
    p.add_argument("--dim", type=int, default=None, help="feature dimension (default max(K-1, 2))")
    p.add_argument("--r-old", type=float, default=0.5, help="old class radius (default 0.5)")
    p.add_argument(
        "--r-new", type=float, nargs="+", default=[0.3], help="new class radius/radii (default 0.3)"
    )
    p.add_argument(
        "--shift",
        type=float,
        nargs="+",
        default=[0.0],
        help="rotation of the new class centres, degrees (0 = stationary; default 0)",
    )
    p.add_argument(
        "--region",
        choices=["ball", "cap"],
        default="ball",
        help="class region: Euclidean ball, or spherical cap with radii in radians",
    )
    p.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean")
    p.add_argument(
        "--coupling",
        choices=["independent", "shrink"],
        default="independent",
        help="new feature of a sample: independent draw, or its old feature pulled to the centre",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="Euclidean distance on raw ball points instead of L2-normalised features",
    )
    p.add_argument("--pairs", type=int, default=100_000, help="pairs per group (default 100000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write theory.json and PNG plots here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _print_table(results: list) -> None:
    from ..analysis import montecarlo

    header = ["r_new", "shift°", "same frac", "diff frac", "E same new/old", "E diff new/old"]
    rows = []
    for r in results:
        rows.append(
            [
                f"{r.r_new:g}",
                f"{r.shift:g}",
                f"{r.same_frac:.3f}",
                f"{r.diff_frac:.3f}",
                f"{r.same_expect_new:.4f} {'<=' if r.same_holds_in_expectation else '> '} "
                f"{r.same_expect_old:.4f}",
                f"{r.diff_expect_new:.4f} {'>=' if r.diff_holds_in_expectation else '< '} "
                f"{r.diff_expect_old:.4f}",
            ]
        )
    r0 = results[0]
    title = (
        f"Theorem 1 model: K={r0.K}, d={r0.d}, region={r0.region}, metric={r0.metric}"
        f"{' (raw)' if not r0.normalize else ''}, coupling={r0.coupling}, r_old={r0.r_old:g}, "
        f"{r0.n_pairs} pairs per group, seed {r0.seed}"
    )
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="right")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    except ImportError:  # pragma: no cover - rich is a dependency, plain text is a fallback
        print(title)
        widths = [max(len(h), *(len(row[k]) for row in rows)) for k, h in enumerate(header)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    for r in results:
        line = f"r_new={r.r_new:g} shift={r.shift:g}°: {montecarlo.verdict(r)}"
        for note in r.notes:
            line += f"\n    note: {note}"
        print(line)


def main(args: argparse.Namespace) -> int:
    from ..analysis import figures, montecarlo, theory
    from ..runtime.files import atomic_write_json

    if args.pairs < 2:
        raise InputError(f"--pairs must be >= 2, got {args.pairs}")
    results = montecarlo.sweep(
        r_news=args.r_new,
        shifts=args.shift,
        r_old=args.r_old,
        K=args.K,
        d=args.dim,
        region=args.region,
        metric=args.metric,
        coupling=args.coupling,
        normalize=not args.raw,
        n_pairs=args.pairs,
        seed=args.seed,
    )
    payload = {
        "settings": {
            "K": args.K,
            "d": results[0].d,
            "r_old": args.r_old,
            "r_new": list(args.r_new),
            "shift_deg": list(args.shift),
            "region": args.region,
            "metric": args.metric,
            "normalize": not args.raw,
            "coupling": args.coupling,
            "pairs_per_group": args.pairs,
            "seed": args.seed,
        },
        "results": [r.to_dict() for r in results],
        "files": [],
    }
    if args.region == "cap":
        d = results[0].d
        payload["closed_form"] = {
            "cap_mean_cos": {
                f"{r:g}": theory.cap_mean_cos(r, d) for r in sorted({args.r_old, *args.r_new})
            },
            "critical_shift_deg": {
                f"{r:g}": theory.critical_shift_deg(args.r_old, r, d) for r in args.r_new
            },
        }
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        files = [
            figures.plot_theory(results, out / "theory.png"),
            figures.plot_theory_2d(
                out / "theory_2d.png",
                r_old=args.r_old,
                r_new=args.r_new[0],
                shift=max(args.shift) if max(args.shift) > 0 else 30.0,
                region=args.region,
                seed=args.seed,
            ),
        ]
        payload["files"] = [str(f) for f in [out / "theory.json", *files]]
        atomic_write_json(out / "theory.json", payload, indent=2)
    if args.json:
        json.dump(payload, sys.stdout)
        sys.stdout.write("\n")
    else:
        _print_table(results)
        for f in payload["files"]:
            print(f"wrote {f}")
    return 0
