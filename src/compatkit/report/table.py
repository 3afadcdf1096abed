"""Statistics over seeds: the comparison table, AA_t and local-class accuracy per task.

Compatibility (AC, AM, BC, FC, the matrix) and plasticity (how much the local learner learned:
the local-class accuracy of every task model) are reported side by side, because a model that
does not move is trivially compatible. Statistics are recomputed from the per-seed ``runs``
(the raw data), so the tables cannot drift from them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .metrics_file import (
    METRIC_KEYS,
    PLASTICITY_KEYS,
    is_number,
    lower_triangle,
    method_names,
    method_runs,
    resolve_violations,
)

__all__ = [
    "METRIC_LABELS",
    "TABLE_COLUMNS",
    "chance_levels",
    "comparison_table",
    "fmt_stat",
    "gallery_chance",
    "local_curve",
    "md_table",
    "method_aa",
    "method_local",
    "run_value",
    "stat",
    "table_columns",
    "table_header",
]

METRIC_LABELS = {
    "AC": "AC",
    "AM": "AM (%)",
    "BC": "BC (pp)",
    "FC": "FC (pp)",
    "final_self": "final self-test (%)",
    "local_final": "final local acc. (%)",
    "local_mean": "mean local acc. (%)",
    "local_gain": "gain over start (pp)",
}

TABLE_COLUMNS = ("method", "AC", "AM", *PLASTICITY_KEYS, "BC", "FC", "final_self", "violations")
"""Every column of the comparison table, in display order (markdown, terminal, sweeps).
Compatibility first, then plasticity beside it; the plasticity columns are shown only for runs
that recorded local-class accuracy (see :func:`table_columns`)."""


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (cells as given: escape ``|`` in free text first)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def stat(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Mean and sample std (ddof 1; 0.0 with one seed) of the non-null values, or None."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": float(np.mean(vals)), "std": std, "n": len(vals), "values": vals}


def fmt_stat(s: Mapping[str, Any] | None, digits: int = 2) -> str:
    """``mean ± std`` with more than one value, ``mean`` with one, ``n/a`` with none."""
    if s is None:
        return "n/a"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"


def local_curve(run: Mapping[str, Any], key: str = "local_accuracy") -> list[float | None] | None:
    """Local-class accuracy (%) of each task model of one run (``key="local_start"``: of the
    model each task started from), or None when not recorded."""
    acc = run.get(key)
    if not isinstance(acc, Sequence) or not acc:
        return None
    return [float(a) if is_number(a) else None for a in acc]


def run_value(run: Mapping[str, Any], key: str) -> float | None:
    """A scalar of one run; the plasticity scalars fall back to its per-task list."""
    if is_number(run.get(key)):
        return float(run[key])
    if key in PLASTICITY_KEYS:
        curve = local_curve(run)
        if curve is None:
            return None
        if key == "local_final":
            return curve[-1]
        if key == "local_gain":
            start = local_curve(run, "local_start") or []
            vals = [a - b for a, b in zip(curve, start, strict=False) if None not in (a, b)]
        else:
            vals = [a for a in curve if a is not None]
        return float(np.mean(vals)) if vals else None
    return None


def comparison_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per method: the metrics as "mean ± std" over seeds and the violation count.

    A method without ``runs`` falls back to its ``summary`` and then to its top-level
    (single-seed) values. Each row holds display strings under the metric names and the
    numbers under ``stats`` (``{"mean", "std", "n", "values"}`` or None for a metric that is
    undefined, e.g. BC and FC with one task, or local accuracy of a run that did not record it).
    """
    rows = []
    for m in method_names(metrics):
        entry = metrics[m]
        runs = method_runs(entry)
        has_runs = "runs" in entry
        summary = entry.get("summary") if isinstance(entry.get("summary"), Mapping) else {}
        stats: dict[str, Any] = {}
        for key in (*METRIC_KEYS, *PLASTICITY_KEYS):
            summ = summary.get(key)
            per_run = [run_value(r, key) for r in runs] if has_runs else []
            if has_runs and any(v is not None for v in per_run):
                stats[key] = stat(per_run)
            elif isinstance(summ, Mapping) and is_number(summ.get("mean")):
                vals = summ.get("values")
                n = len(vals) if isinstance(vals, Sequence) else 1
                std = float(summ.get("std") or 0.0)
                stats[key] = {"mean": float(summ["mean"]), "std": std, "n": n, "values": vals}
            else:
                stats[key] = stat([run_value(entry, key)])
        counts = [len(resolve_violations(r["matrix"], r.get("violations"))) for r in runs]
        t = lower_triangle(runs[0]["matrix"]).shape[0]
        pairs = t * (t - 1) // 2
        if len(set(counts)) == 1:
            viol = f"{counts[0]} / {pairs}"
        else:
            viol = f"{np.mean(counts):.1f} ± {np.std(counts, ddof=1):.1f} / {pairs}"
        row: dict[str, Any] = {"method": m, "seeds": len(runs)}
        for key in (*METRIC_KEYS, *PLASTICITY_KEYS):
            row[key] = fmt_stat(stats[key])
        row["violations"] = viol
        row["stats"] = stats
        row["violation_counts"] = counts
        row["pairs"] = pairs
        row["seed_ids"] = [r.get("seed") for r in runs]
        rows.append(row)
    return rows


def table_columns(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The columns worth showing: a plasticity column only when some method recorded it."""
    return tuple(
        k
        for k in TABLE_COLUMNS
        if k not in PLASTICITY_KEYS or any(r["stats"].get(k) is not None for r in rows)
    )


def table_header(key: str) -> str:
    """Display name of a comparison-table column."""
    return {"method": "method", "violations": "violations / pairs"}.get(
        key, METRIC_LABELS.get(key, key)
    )


def _mean_std(curves: list[list[float]]) -> tuple[list[float], list[float] | None]:
    """Per-task mean and sample std over seeds; a task without any value stays NaN."""
    arr = np.asarray(curves, dtype=float)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, on purpose
        mean = np.nanmean(arr, axis=0).tolist()
        std = np.nanstd(arr, axis=0, ddof=1).tolist() if len(curves) > 1 else None
    return mean, std


def method_aa(entry: Mapping[str, Any]) -> tuple[list[float], list[float] | None, int]:
    """Mean and sample std of AA_t over seeds (std None with one seed), and the seed count."""
    from .metrics_file import aa_curve

    curves = []
    for r in method_runs(entry):
        aa = r.get("AA")
        curves.append([float(a) for a in aa] if aa is not None else aa_curve(r["matrix"]))
    mean, std = _mean_std(curves)
    return mean, std, len(curves)


def method_local(
    entry: Mapping[str, Any], key: str = "local_accuracy"
) -> tuple[list[float], list[float] | None, int] | None:
    """Mean and sample std over seeds of the local-class accuracy per task (``key``: of the
    task models, or ``local_start`` of the models the tasks started from), or None."""
    curves = [local_curve(r, key) for r in method_runs(entry)]
    curves = [
        [np.nan if a is None else a for a in c]
        for c in curves
        if c is not None and any(a is not None for a in c)
    ]
    if not curves:
        return None
    mean, std = _mean_std(curves)
    return mean, std, len(curves)


def chance_levels(metrics: Mapping[str, Any]) -> list[float] | None:
    """Chance accuracy (%) of each task model on the local classes seen so far, from
    ``_meta.tasks`` (the classes of each task); None when the run did not record them."""
    meta = metrics.get("_meta")
    tasks = meta.get("tasks") if isinstance(meta, Mapping) else None
    if not isinstance(tasks, Sequence) or not tasks:
        return None
    seen, out = 0, []
    for classes in tasks:
        if not isinstance(classes, Sequence):
            return None
        seen += len(classes)
        out.append(100.0 / seen if seen else float("nan"))
    return out


def gallery_chance(meta: Mapping[str, Any]) -> float | None:
    """Chance accuracy (%) of the 1:N search: one of the gallery's class templates drawn at
    random, 100 / (gallery classes); None when the run did not record the count."""
    g = meta.get("gallery_classes") if isinstance(meta, Mapping) else None
    return 100.0 / g if isinstance(g, int) and not isinstance(g, bool) and g > 0 else None
