"""How far a number over seeds can be trusted: 95 % intervals and paired differences.

Runs of one config with different seeds are independent draws of the same training; with n
seeds, the mean's 95 % interval is ``mean ± t(0.975, n-1) · s / sqrt(n)`` (Student's t, s
the sample standard deviation). Two methods run on the same seeds share each seed's data
order and memory draws, so their difference is judged per seed pair (HOC minus ER on seed
42, on seed 43, ...): the paired interval is narrower than the two separate ones suggest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .metrics_file import method_names, method_runs
from .table import md_table, run_value

__all__ = [
    "INTERVAL_KEYS",
    "interval",
    "paired_differences",
    "seeds_section",
    "t_quantile_975",
]

INTERVAL_KEYS = ("AC", "AM", "local_final", "local_mean")
"""The metrics given with an interval: compatibility (AC, AM) and plasticity."""

_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
"""Student's t 0.975 quantile for 1..30 degrees of freedom (4 decimals)."""


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom: the table to
    30, then the Cornish-Fisher expansion around the normal 1.96 (error < 1e-4)."""
    if df < 1:
        raise ValueError(f"t quantile: df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def interval(
    values: Sequence[float | None], bounds: tuple[float, float] | None = None
) -> dict[str, Any] | None:
    """Mean, sample std and 95 % interval of the non-null values (no interval with one).

    ``bounds``: the values the metric can take (AC 0..1, accuracies 0..100); the interval is
    cut to them, since a t interval of three seeds of AC can reach past 1."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    n = len(vals)
    mean = math.fsum(vals) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "half": None, "lo": None, "hi": None}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"n": n, "mean": mean, "std": std, "half": half, "lo": lo, "hi": hi}


def paired_differences(
    metrics: Mapping[str, Any], a: str, b: str, keys: Sequence[str] = INTERVAL_KEYS
) -> dict[str, Any] | None:
    """``a`` minus ``b`` on every seed both ran: per seed, and their mean with its interval.

    Returns ``{"seeds": [...], "per_seed": {key: [diff per seed]}, "stats": {key:
    interval}}``, or None when the two share no seed."""
    if a not in metrics or b not in metrics:
        return None
    runs_a = {r.get("seed"): r for r in method_runs(metrics[a])}
    runs_b = {r.get("seed"): r for r in method_runs(metrics[b])}
    seeds = [s for s in runs_a if s is not None and s in runs_b]
    if not seeds:
        return None
    per_seed: dict[str, list[float | None]] = {}
    for k in keys:
        diffs = []
        for s in seeds:
            va, vb = run_value(runs_a[s], k), run_value(runs_b[s], k)
            diffs.append(None if va is None or vb is None else va - vb)
        per_seed[k] = diffs
    return {
        "seeds": seeds,
        "per_seed": per_seed,
        "stats": {k: interval(v) for k, v in per_seed.items()},
    }


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _interval_cell(
    s: Mapping[str, Any] | None, digits: int, top: float, signed: bool = False
) -> str:
    """``mean [lo, hi]``, the interval cut to the values the metric can take (0..top, or
    -top..top for a difference): a t interval of three seeds of AC can reach past 1."""
    if s is None:
        return "n/a"
    sign = "+" if signed else ""
    if s["n"] == 1:
        return f"{s['mean']:{sign}.{digits}f} (single seed)"
    lo, hi = max(s["lo"], -top if signed else 0.0), min(s["hi"], top)
    return f"{s['mean']:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


_LABELS = {
    "AC": ("AC", 3, 1.0),
    "AM": ("AM (%)", 2, 100.0),
    "local_final": ("final local acc. (%)", 2, 100.0),
    "local_mean": ("mean local acc. (%)", 2, 100.0),
}
"""Column title, decimals and the largest value of each metric."""


def seeds_section(metrics: Mapping[str, Any], a: str = "hoc", b: str = "er") -> list[str]:
    """Markdown: each method's 95 % intervals over seeds and, when both ran, ``a`` minus
    ``b`` per seed pair; nothing for a single-seed run (its table says so)."""
    methods = method_names(metrics)
    n_max = max(len(method_runs(metrics[m])) for m in methods)
    if n_max < 2:
        return []
    keys = [
        k
        for k in INTERVAL_KEYS
        if any(run_value(r, k) is not None for m in methods for r in method_runs(metrics[m]))
    ]
    out = [
        "## Seeds: 95 % intervals",
        "",
        "Mean over seeds [95 % interval of the mean: mean ± t(0.975, n−1) · s / √n, cut to "
        "the values the metric can take]. Another set of seeds of the same config may give "
        "a mean anywhere in it; another CPU adds differences of its own (see "
        "docs/reproducibility.md).",
        "",
    ]
    header = ["method", "seeds", *(_LABELS[k][0] for k in keys)]
    rows = []
    for m in methods:
        runs = method_runs(metrics[m])
        stats = {k: interval([run_value(r, k) for r in runs]) for k in keys}
        cells = [_interval_cell(stats[k], _LABELS[k][1], _LABELS[k][2]) for k in keys]
        rows.append([m, len(runs), *cells])
    out += [md_table(header, rows), ""]
    diff = paired_differences(metrics, a, b, keys)
    if diff is None:
        return out
    out += [
        f"### {a} minus {b}, per seed pair",
        "",
        "Each row is one seed, both methods trained on the same data order and memory "
        "draws; the last row is the mean difference with its 95 % interval. An interval "
        "that excludes 0 says the difference holds beyond seed-to-seed noise.",
        "",
    ]
    header = ["seed", *(f"Δ {_LABELS[k][0]}" for k in keys)]
    rows = [
        [s, *(_fmt(diff["per_seed"][k][i], _LABELS[k][1]) for k in keys)]
        for i, s in enumerate(diff["seeds"])
    ]
    rows.append(
        [
            f"mean [95 %], n={len(diff['seeds'])}",
            *(
                _interval_cell(diff["stats"][k], _LABELS[k][1], _LABELS[k][2], signed=True)
                for k in keys
            ),
        ]
    )
    return [*out, md_table(header, rows), ""]
