"""AC, AM, AA_t, BC and FC of a compatibility matrix (conventions: the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .matrix import as_matrix

__all__ = [
    "CompatReport",
    "aa_curve",
    "average_compatibility",
    "average_multimodel_accuracy",
    "backward_compatibility",
    "compatibility_report",
    "forward_compatibility",
    "violations",
]


def violations(C) -> list[dict]:
    """Pairs ``j < i`` that fail the criterion (``C[i][j] <= C[j][j]``), zero-based.

    Each item is ``{"row": i, "col": j, "value": C[i][j], "self": C[j][j]}``,
    ordered by row then column.
    """
    a = as_matrix(C)
    rows, cols = np.tril_indices(a.shape[0], k=-1)  # row by row, columns in order
    bad = ~(a[rows, cols] > a[cols, cols])
    return [
        {"row": int(i), "col": int(j), "value": float(a[i, j]), "self": float(a[j, j])}
        for i, j in zip(rows[bad], cols[bad], strict=True)
    ]


def _pair_counts(a: np.ndarray) -> tuple[int, int]:
    t = a.shape[0]
    rows, cols = np.tril_indices(t, k=-1)
    ok = a[rows, cols] > a[cols, cols]
    return int(rows.size), int(ok.sum())


def average_compatibility(C) -> float:
    """AC: fraction of the T(T-1)/2 pairs ``j < i`` with ``C[i][j] > C[j][j]`` (strict).

    With T = 1 there is no pair and AC is undefined: the function returns NaN
    (so it can still be averaged with ``np.nanmean``); :meth:`CompatReport.to_dict`
    writes it as ``null``.
    """
    pairs, good = _pair_counts(as_matrix(C))
    return good / pairs if pairs else float("nan")


def average_multimodel_accuracy(C, t: int | None = None) -> float:
    """AM: mean of the lower triangle including the diagonal (percent).

    With ``t`` (1 <= t <= T) the mean is over the top-left ``t x t`` block only,
    which is AA_t; ``t = None`` means ``t = T``.
    """
    a = as_matrix(C)
    n = a.shape[0]
    if t is None:
        t = n
    if not 1 <= t <= n:
        raise InputError(f"t must be between 1 and T={n}, got {t}")
    block = a[:t, :t]
    return float(block[np.tril_indices(t)].mean())


def aa_curve(C) -> list[float]:
    """``[AA_1, ..., AA_T]``: AM of each top-left block; the last entry equals AM.

    The block of ``t`` models adds row ``t-1`` of the lower triangle to the block of ``t-1``,
    so one cumulative sum of the row sums gives every AA_t in O(T^2) (a mean per block is
    O(T^3): 27 s at T = 1,000). ``benchmarks/bench_metrics.py`` times both.
    """
    a = as_matrix(C)
    t = a.shape[0]
    lower = np.where(np.tri(t, dtype=bool), a, 0.0)
    sums = np.cumsum(lower.sum(axis=1))
    sizes = np.arange(1, t + 1, dtype=np.float64)
    return (sums / (sizes * (sizes + 1) / 2)).tolist()


def backward_compatibility(C) -> float | None:
    """BC (CL2R): mean over earlier models ``i`` of ``C[T-1][i] - C[i][i]`` (zero-based).

    1-based, as the docs write it: mean over i < T of (C[T][i] - C[i][i]): how
    much the *last* model gains (positive) or loses (negative), in percentage
    points, when it queries each earlier model's gallery instead of that model
    querying its own. None when T = 1.
    """
    a = as_matrix(C)
    t = a.shape[0]
    if t < 2:
        return None
    i = np.arange(t - 1)
    return float(np.mean(a[t - 1, i] - a[i, i]))


def forward_compatibility(C) -> float | None:
    """FC (CL2R): mean over ``i = 1 .. T-1`` of ``C[i][i-1] - C[i][i]`` (zero-based).

    1-based, as the docs write it: mean over i >= 2 of (C[i][i-1] - C[i][i]):
    how much each model loses (usually negative), in percentage points, when
    it searches the previous model's gallery instead of its own re-extracted
    one; 0 means an update costs nothing. None when T = 1.
    """
    a = as_matrix(C)
    t = a.shape[0]
    if t < 2:
        return None
    i = np.arange(1, t)
    return float(np.mean(a[i, i - 1] - a[i, i]))


@dataclass
class CompatReport:
    """All the metrics of one matrix. Indices in ``violations`` are zero-based."""

    AC: float
    """NaN when T = 1 (no pairs)."""
    AM: float
    AA: list[float] = field(default_factory=list)
    BC: float | None = None
    FC: float | None = None
    violations: list[dict] = field(default_factory=list)
    pairs: int = 0
    compatible_pairs: int = 0

    def to_dict(self) -> dict:
        """JSON-safe dict: the undefined AC of a 1 x 1 matrix becomes ``None``."""
        ac = None if math.isnan(self.AC) else self.AC
        return {
            "AC": ac,
            "AM": self.AM,
            "AA": list(self.AA),
            "BC": self.BC,
            "FC": self.FC,
            "violations": [dict(v) for v in self.violations],
            "pairs": self.pairs,
            "compatible_pairs": self.compatible_pairs,
        }


def compatibility_report(C) -> CompatReport:
    """Compute AC, AM, AA_t, BC, FC and the violating pairs of a compatibility matrix.

    ``C`` is anything :func:`load_matrix` reads once parsed: a square array or a list of rows,
    lower-triangle rows allowed, in percent or as fractions (read as percent), exactly as
    ``compatkit metrics`` takes it.
    """
    a = as_matrix(C)
    pairs, good = _pair_counts(a)
    return CompatReport(
        AC=good / pairs if pairs else float("nan"),
        AM=average_multimodel_accuracy(a),
        AA=aa_curve(a),
        BC=backward_compatibility(a),
        FC=forward_compatibility(a),
        violations=violations(a),
        pairs=pairs,
        compatible_pairs=good,
    )
