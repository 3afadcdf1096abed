"""AA_t on large matrices: the per-block mean (before, O(T^3)) against one cumulative sum (now).

``compatkit.metrics.aa_curve`` used to compute AA_t as the mean of each top-left t x t block,
validating a copy of the whole matrix for every t: T blocks of up to T^2 entries, O(T^3).
It now adds row t's lower-triangle sum to a running total: one pass, O(T^2). Both are run
here side by side on the same random matrix (T = 1,000 and 2,000 by default), their results
compared, and the whole ``compatibility_report`` and ``compatkit metrics`` text rendering
timed as a user meets them.

    python benchmarks/bench_metrics.py [--quick] [--sizes 1000 2000] [--no-before]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from _common import base_parser, finish
from _results import md_table
from compatkit.commands.metrics import render_text
from compatkit.metrics import aa_curve, as_matrix, average_multimodel_accuracy, compatibility_report

NAME = "bench_metrics"
TITLE = "bench_metrics: AA_t and the metrics report on large compatibility matrices"

__all__ = ["aa_curve_before", "main"]


def aa_curve_before(c) -> list[float]:
    """The implementation before this change, verbatim: one AM per top-left block."""
    a = as_matrix(c)
    return [average_multimodel_accuracy(a, t) for t in range(1, a.shape[0] + 1)]


def _time(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000], help="values of T")
    p.add_argument(
        "--no-before",
        action="store_true",
        help="skip the O(T^3) implementation (minutes at T = 2,000)",
    )
    args = p.parse_args(argv)
    sizes = [50, 100] if args.quick else args.sizes
    figures: dict = {}
    rows = []
    for t in sizes:
        rng = np.random.default_rng(t)
        c = rng.uniform(40.0, 95.0, (t, t))
        after_s, after = _time(aa_curve, c)
        before_s, before = (None, None) if args.no_before else _time(aa_curve_before, c)
        diff = None if before is None else float(np.max(np.abs(np.subtract(before, after))))
        report_s, rep = _time(compatibility_report, c)
        text_s, _ = _time(render_text, as_matrix(c), rep)
        figures[t] = {
            "before_s": before_s,
            "after_s": after_s,
            "max_abs_diff": diff,
            "report_s": report_s,
            "text_s": text_s,
        }
        rows.append(
            [
                f"{t:,}",
                "not run" if before_s is None else f"{before_s:.2f}",
                f"{after_s:.4f}",
                "-" if before_s is None else f"{before_s / after_s:,.0f}x",
                "-" if diff is None else f"{diff:.1e}",
                f"{report_s:.2f}",
                f"{text_s:.2f}",
            ]
        )
    body = "\n".join(
        [
            "Random T x T matrices (uniform 40-95 %), one run each (the before column is the "
            "per-block mean this change replaced; max |diff| compares the two curves, in "
            "percentage points).",
            "",
            md_table(
                [
                    "T",
                    "aa_curve before (s)",
                    "aa_curve now (s)",
                    "speed-up",
                    "max abs diff",
                    "compatibility_report (s)",
                    "text rendering (s)",
                ],
                rows,
            ),
        ]
    )
    finish(NAME, TITLE, "bench_metrics.py", argv, body, results=args.results)
    return figures


if __name__ == "__main__":
    main()
