"""Reading ``metrics.json``: the lower-triangular matrices, their violations, validation.

Everything in the report reads the ``metrics.json`` a run leaves behind and nothing else, so a
report can be regenerated long after the models are gone. Matrices are stored zero-based
(``C[i][j]``, query model i, gallery model j, ``j <= i``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..runtime.files import read_json

METRIC_KEYS = ("AC", "AM", "BC", "FC", "final_self")
"""Scalar compatibility metrics of one run. AC is a fraction; the others are percent."""

PLASTICITY_KEYS = ("local_final", "local_mean", "local_gain")
"""Scalar plasticity metrics of one run: the local-class accuracy (%) of the last task model,
its mean over the task models, and the mean gain (percentage points) of each task model over
the model its task started from (see ``compatkit.protocol.evaluate``)."""

_VALUE_TOL = 0.01
"""Percent points; a violation's stored ``value`` may be rounded to two decimals."""

Matrix = Sequence[Sequence[float]]


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def lower_triangle(matrix: Matrix | np.ndarray, name: str = "matrix") -> np.ndarray:
    """Square float array of a lower-triangular matrix, NaN above the diagonal.

    Accepts the stored form (row i has i + 1 entries) and, for robustness, full square rows
    whose upper part is ignored. Raises ValueError naming the bad row, because a truncated
    or hand-edited metrics file should say where it is broken.
    """
    if isinstance(matrix, np.ndarray):
        rows = matrix.tolist()
    elif isinstance(matrix, Sequence) and not isinstance(matrix, str):
        rows = list(matrix)
    else:
        raise InputError(f"{name}: expected a list of rows, got {type(matrix).__name__}")
    t = len(rows)
    if t == 0:
        raise InputError(f"{name}: empty matrix")
    out = np.full((t, t), np.nan)
    for i, row in enumerate(rows):
        if not isinstance(row, Sequence) or isinstance(row, str):
            raise InputError(f"{name}: row {i} is not a list")
        if len(row) not in (i + 1, t):
            raise InputError(
                f"{name}: row {i} has {len(row)} entries; row i of a lower-triangular "
                f"matrix has i + 1 (here {i + 1})"
            )
        for j in range(i + 1):
            if not is_number(row[j]):
                raise InputError(f"{name}: entry [{i}][{j}] is {row[j]!r}, not a finite number")
            out[i, j] = float(row[j])
    return out


def matrix_violations(matrix: Matrix | np.ndarray) -> list[tuple[int, int]]:
    """Zero-based pairs (i, j), j < i, that break the criterion C[i][j] > C[j][j] (strict)."""
    c = lower_triangle(matrix)
    t = c.shape[0]
    return [(i, j) for i in range(t) for j in range(i) if not c[i, j] > c[j, j]]


def _violation_pairs(violations: Iterable[Any]) -> list[tuple[int, int, float | None]]:
    pairs = []
    for v in violations:
        if isinstance(v, Mapping):
            r, c, val = v.get("row"), v.get("col"), v.get("value")
        elif isinstance(v, Sequence) and len(v) >= 2:
            r, c, val = v[0], v[1], None
        else:
            raise InputError(f"violation {v!r}: expected {{'row', 'col', ...}} or (row, col)")
        if not isinstance(r, int) or not isinstance(c, int):
            raise InputError(f"violation {v!r}: row and col must be integers")
        pairs.append((r, c, float(val) if is_number(val) else None))
    return pairs


def resolve_violations(
    matrix: Matrix | np.ndarray, violations: Iterable[Any] | None
) -> set[tuple[int, int]]:
    """The zero-based cells to mark as violations.

    ``violations`` may list ``{"row", "col", "value", ...}`` dicts or ``(row, col)`` pairs,
    zero-based or one-based (the paper's text writes its one violation as C[5][4]). The base
    is decided for the whole list by checking it against the matrix: indices in range, below
    the diagonal, the stored value matching the cell and the cell really failing the
    criterion. ``None`` means "not recorded": the violations are recomputed from the matrix.
    """
    c = lower_triangle(matrix)
    t = c.shape[0]
    if violations is None:
        return set(matrix_violations(c))
    pairs = _violation_pairs(violations)
    if not pairs:
        return set()

    def fits(base: int) -> bool:
        for r, col, val in pairs:
            i, j = r - base, col - base
            if not (0 <= j < i < t):
                return False
            if val is not None and abs(c[i, j] - val) > _VALUE_TOL:
                return False
            if c[i, j] > c[j, j]:
                return False
        return True

    for base in (0, 1):
        if fits(base):
            return {(r - base, col - base) for r, col, _ in pairs}
    raise InputError(
        f"recorded violations {[(r, col) for r, col, _ in pairs]} do not match the matrix "
        f"(neither zero- nor one-based cells break C[i][j] > C[j][j] with those values)"
    )


def aa_curve(matrix: Matrix | np.ndarray) -> list[float]:
    """AA_t for t = 1..T: the mean of the lower triangle of the top-left t x t block."""
    c = lower_triangle(matrix)
    return [float(np.nanmean(c[:t, :t])) for t in range(1, c.shape[0] + 1)]


def method_names(metrics: Mapping[str, Any]) -> list[str]:
    """Methods in a metrics dict: ``_meta.methods`` order first, then any other method keys."""
    found = [
        k
        for k, v in metrics.items()
        if not k.startswith("_") and isinstance(v, Mapping) and "matrix" in v
    ]
    meta = metrics.get("_meta")
    order = list(meta.get("methods") or []) if isinstance(meta, Mapping) else []
    return [m for m in order if m in found] + [m for m in found if m not in order]


def method_runs(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """One dict per seed; a method written without ``runs`` is its own single run."""
    runs = entry.get("runs")
    if isinstance(runs, Sequence) and runs and all(isinstance(r, Mapping) for r in runs):
        return list(runs)
    return [entry]


def validate_metrics(metrics: Any, source: str = "metrics.json") -> dict[str, Any]:
    """Check the parts of ``metrics.json`` the report relies on; return it unchanged.

    Unknown keys are ignored on purpose (later features add their own). Every message names
    the file, the method and the field, so a broken run directory can be fixed by hand.
    """
    if not isinstance(metrics, Mapping):
        raise InputError(f"{source}: expected a JSON object, got {type(metrics).__name__}")
    methods = method_names(metrics)
    if not methods:
        raise InputError(
            f"{source}: no method results found (expected keys like 'hoc' holding a 'matrix')"
        )
    meta = metrics.get("_meta", {})
    if not isinstance(meta, Mapping):
        raise InputError(f"{source}: '_meta' must be an object")
    sizes = set()
    for m in methods:
        for k, run in enumerate(method_runs(metrics[m])):
            where = f"{source}: {m}" + (f" run {k}" if "runs" in metrics[m] else "")
            if "matrix" not in run:
                raise InputError(f"{where}: missing 'matrix'")
            c = lower_triangle(run["matrix"], name=f"{where} matrix")
            sizes.add(c.shape[0])
            for key in (*METRIC_KEYS, *PLASTICITY_KEYS):
                val = run.get(key)
                if val is not None and not is_number(val):
                    raise InputError(f"{where}: {key} = {val!r} is not a number or null")
            aa = run.get("AA")
            if aa is not None and (
                not isinstance(aa, Sequence)
                or len(aa) != c.shape[0]
                or not all(is_number(a) for a in aa)
            ):
                raise InputError(f"{where}: AA must list {c.shape[0]} numbers, one per task")
            for key in ("local_accuracy", "local_start"):
                local = run.get(key)
                if local is not None and (
                    not isinstance(local, Sequence)
                    or len(local) != c.shape[0]
                    or not all(a is None or is_number(a) for a in local)
                ):
                    raise InputError(
                        f"{where}: {key} must list {c.shape[0]} numbers or nulls, one per task"
                    )
            resolve_violations(c, run.get("violations"))  # raises on a mismatch
    if len(sizes) > 1:
        raise InputError(f"{source}: matrices of different sizes {sorted(sizes)} in one run")
    t = sizes.pop()
    for r in replacement_tasks(metrics):
        if not 0 <= r < t:
            raise InputError(f"{source}: replacement task {r} is outside tasks 0..{t - 1}")
    return dict(metrics)


def replacement_tasks(metrics: Mapping[str, Any]) -> list[int]:
    meta = metrics.get("_meta")
    reps = meta.get("replacement_tasks") if isinstance(meta, Mapping) else None
    if reps is None:
        return []
    if not isinstance(reps, Sequence) or not all(
        isinstance(r, int) and not isinstance(r, bool) for r in reps
    ):
        raise InputError(f"_meta.replacement_tasks must list task ids, got {reps!r}")
    return sorted(set(reps))


def load_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``metrics.json`` (``path`` is the file or its run directory)."""
    p = Path(path)
    if p.suffix != ".json":  # a run directory
        if not p.is_dir():
            raise RunFileNotFound(f"run directory not found: {p}")
        p = p / "metrics.json"
    if not p.is_file():
        raise RunFileNotFound(
            f"no {p.name} in {p.parent} (a run writes it when its evaluation finishes)"
        )
    return validate_metrics(read_json(p), source=str(p))


class RunFileNotFound(InputError, FileNotFoundError):
    """A run directory, or a file a run should hold, is not there."""
