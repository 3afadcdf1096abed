"""What an evaluated run adds to each (method, seed) logged run: per task, the AA_t curve,
the local-class accuracy (and that of the model each task started from) and the self-test;
the final AC, AM, BC, FC and plasticity numbers; the compatibility matrix as a figure (on the
report's colour scale) and as a table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..report.matrix_plots import gap_limit, matrix_figure
from ..report.metrics_file import is_number, lower_triangle, method_names, method_runs
from ..report.style import model_labels, png_bytes
from .session import Tracking

__all__ = ["SUMMARY_KEYS", "log_results", "sequence_name"]

SUMMARY_KEYS = ("AC", "AM", "BC", "FC", "final_self", "local_final", "local_mean", "local_gain")


def sequence_name(method: str, seed: int) -> str:
    """The logged run of one (method, seed) sequence."""
    return f"{method}/seed_{seed}"


def _per_task(run: Mapping[str, Any]) -> list[dict[str, float]]:
    c = lower_triangle(run["matrix"])
    series = {
        "task/AA": run.get("AA"),
        "task/local_accuracy": run.get("local_accuracy"),
        "task/local_start": run.get("local_start"),
        "task/self_test": [float(c[t, t]) for t in range(c.shape[0])],
    }
    rows: list[dict[str, float]] = [{} for _ in range(c.shape[0])]
    for key, values in series.items():
        for t, v in enumerate(values or []):
            if t < len(rows) and is_number(v):
                rows[t][key] = float(v)
    return rows


def log_results(tracking: Tracking, results: Mapping[str, Any]) -> None:
    """Log an evaluated run (``metrics.json``'s content) to its (method, seed) runs."""
    if not tracking.enabled:
        return
    meta = results.get("_meta") or {}
    reps = list(meta.get("replacement_tasks") or [])
    methods = method_names(results)
    runs = {m: method_runs(results[m]) for m in methods}
    limit = gap_limit(r["matrix"] for rs in runs.values() for r in rs)  # one scale for all
    for m in methods:
        for run in runs[m]:
            seed = run.get("seed")
            tracker = tracking.run(sequence_name(m, seed), "sequence", method=m, seed=seed)
            if tracker is None:
                return
            for t, values in enumerate(_per_task(run)):
                if values:
                    tracker.log_scalars(values, t + 1, "task")
            tracker.log_summary({k: float(run[k]) for k in SUMMARY_KEYS if is_number(run.get(k))})
            c = lower_triangle(run["matrix"])
            fig = matrix_figure(c, run.get("violations"), f"{m} (seed {seed})", reps, limit)
            tracker.log_image("compatibility_matrix", png_bytes(fig), c.shape[0])
            columns, rows = matrix_table(c, reps)
            tracker.log_table("compatibility_matrix_table", columns, rows)


def matrix_table(c, reps: Sequence[int]) -> tuple[list[str], list[list[Any]]]:
    """The matrix as columns and rows: query model per row, gallery model per column
    (one-based, ``*`` on replacements), None above the diagonal."""
    t = c.shape[0]
    labels = model_labels(range(t), reps)
    rows = [
        [labels[i], *(round(float(c[i, j]), 4) if j <= i else None for j in range(t))]
        for i in range(t)
    ]
    return ["query \\ gallery", *labels], rows
