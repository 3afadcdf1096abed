"""The run report: comparison table, compatibility-matrix heat maps, AA_t curves, report.md.

Everything here reads the ``metrics.json`` a run leaves behind and nothing else, so a
report can be regenerated (``compatkit report RUN_DIR``) long after the models are gone.
The figures follow the paper (Biondi et al., CVPR 2024): Figure 5 is the lower-triangular
compatibility matrix with the pairs that break the empirical criterion on a light-red
background; Figure 4 is AA_t against t with the model replacements marked.

Index conventions: matrices are stored zero-based (``C[i][j]``, query model i, gallery
model j, ``j <= i``); everything shown to a reader (tick labels, tables, violation lists)
is one-based, ``model t`` being the model after task t, as in the paper's text.

Plots use matplotlib's object API with the Agg canvas rather than ``pyplot``: no global
backend switch (a notebook user's backend is left alone), no figure registry to leak.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

METRIC_KEYS = ("AC", "AM", "BC", "FC", "final_self")
"""Scalar metrics of one run, in table order. AC is a fraction; the others are percent."""

METRIC_LABELS = {
    "AC": "AC",
    "AM": "AM (%)",
    "BC": "BC (pp)",
    "FC": "FC (pp)",
    "final_self": "final self-test (%)",
}

DPI = 120
MAX_CELL_TEXT_T = 12
"""Above this many tasks the numbers no longer fit in the cells; the colours carry them."""

_VALUE_TOL = 0.01
"""Percent points; a violation's stored ``value`` may be rounded to two decimals."""

_VIOLATION_FACE = "#ffb8b8"  # light red, opaque so the printed value stays legible (paper Figure 5)
_VIOLATION_EDGE = "#c00000"
_REPLACEMENT_COLOR = "#b8860b"  # dark goldenrod: the paper's yellow markers, readable on white

Matrix = Sequence[Sequence[float]]


# --------------------------------------------------------------------------- validation


def _is_number(x: Any) -> bool:
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
            if not _is_number(row[j]):
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
        pairs.append((r, c, float(val) if _is_number(val) else None))
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


def _runs(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
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
        for k, run in enumerate(_runs(metrics[m])):
            where = f"{source}: {m}" + (f" run {k}" if "runs" in metrics[m] else "")
            if "matrix" not in run:
                raise InputError(f"{where}: missing 'matrix'")
            c = lower_triangle(run["matrix"], name=f"{where} matrix")
            sizes.add(c.shape[0])
            for key in METRIC_KEYS:
                val = run.get(key)
                if val is not None and not _is_number(val):
                    raise InputError(f"{where}: {key} = {val!r} is not a number or null")
            aa = run.get("AA")
            if aa is not None and (
                not isinstance(aa, Sequence)
                or len(aa) != c.shape[0]
                or not all(_is_number(a) for a in aa)
            ):
                raise InputError(f"{where}: AA must list {c.shape[0]} numbers, one per task")
            resolve_violations(c, run.get("violations"))  # raises on a mismatch
    if len(sizes) > 1:
        raise InputError(f"{source}: matrices of different sizes {sorted(sizes)} in one run")
    t = sizes.pop()
    for r in _replacement_tasks(metrics):
        if not 0 <= r < t:
            raise InputError(f"{source}: replacement task {r} is outside tasks 0..{t - 1}")
    return dict(metrics)


def _replacement_tasks(metrics: Mapping[str, Any]) -> list[int]:
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


def read_json(p: Path) -> Any:
    """A JSON file's content; one InputError line naming the file when it is not JSON."""
    try:
        return json.loads(p.read_bytes().decode("utf-8-sig"))
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise InputError(f"{p}: not valid JSON (nested too deeply)") from None
    except OSError as e:
        raise InputError(f"{p}: cannot be read ({e.strerror or e})") from None


# --------------------------------------------------------------------------- statistics


def _stat(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Mean and sample std (ddof 1; 0.0 with one seed) of the non-null values, or None."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": float(np.mean(vals)), "std": std, "n": len(vals), "values": vals}


def _fmt_stat(stat: Mapping[str, Any] | None, digits: int) -> str:
    if stat is None:
        return "n/a"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def comparison_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per method: the metrics as "mean ± std" over seeds and the violation count.

    Statistics are recomputed from the per-seed ``runs`` (the raw data) so the table cannot
    drift from them; a method without ``runs`` falls back to its ``summary`` and then to its
    top-level (single-seed) values. Each row holds display strings under the metric names
    and the numbers under ``stats`` (``{"mean", "std", "n", "values"}`` or None for a metric
    that is undefined, e.g. BC and FC with one task).
    """
    rows = []
    for m in method_names(metrics):
        entry = metrics[m]
        runs = _runs(entry)
        has_runs = "runs" in entry
        summary = entry.get("summary") if isinstance(entry.get("summary"), Mapping) else {}
        stats: dict[str, Any] = {}
        for key in METRIC_KEYS:
            summ = summary.get(key)
            if has_runs and all(key in r for r in runs):
                stats[key] = _stat([r.get(key) for r in runs])
            elif isinstance(summ, Mapping) and _is_number(summ.get("mean")):
                vals = summ.get("values")
                n = len(vals) if isinstance(vals, Sequence) else 1
                std = float(summ.get("std") or 0.0)
                stats[key] = {"mean": float(summ["mean"]), "std": std, "n": n, "values": vals}
            else:
                stats[key] = _stat([entry.get(key)])
        counts = [len(resolve_violations(r["matrix"], r.get("violations"))) for r in runs]
        t = lower_triangle(runs[0]["matrix"]).shape[0]
        pairs = t * (t - 1) // 2
        if len(set(counts)) == 1:
            viol = f"{counts[0]} / {pairs}"
        else:
            viol = f"{np.mean(counts):.1f} ± {np.std(counts, ddof=1):.1f} / {pairs}"
        seeds = [r.get("seed") for r in runs]
        row: dict[str, Any] = {"method": m, "seeds": len(runs)}
        for key in METRIC_KEYS:
            row[key] = _fmt_stat(stats[key], 2)  # AC and percent values both read well so
        row["violations"] = viol
        row["stats"] = stats
        row["violation_counts"] = counts
        row["pairs"] = pairs
        row["seed_ids"] = seeds
        rows.append(row)
    return rows


TABLE_COLUMNS = ("method", *METRIC_KEYS, "violations")
"""Columns of the comparison table as shown (markdown and terminal)."""


def table_header(key: str) -> str:
    """Display name of a comparison-table column."""
    return {"method": "method", "violations": "violations / pairs"}.get(
        key, METRIC_LABELS.get(key, key)
    )


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float):
    """A Figure on the Agg canvas, outside pyplot (see the module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=DPI, bbox_inches="tight", facecolor="white")
    fig.clear()  # free the artists now; nothing else holds the figure
    return p


def _cell_text_style(t: int) -> tuple[int, float] | None:
    """(decimals, font size in points) of the numbers printed in cells, None to omit them."""
    if t > MAX_CELL_TEXT_T:
        return None
    if t <= 7:
        return 2, 9.0
    return 1, 8.0 if t <= 9 else 7.0


def _matrix_side(t: int) -> float:
    """Inches per matrix panel: ~0.6 in per cell for small T, capped so T = 31 fits a page."""
    return float(min(max(0.62 * t + 1.2, 3.0), 9.0))


def _draw_matrix(
    fig,
    ax,
    c: np.ndarray,
    viol: set[tuple[int, int]],
    title: str,
    replacement_tasks: Sequence[int],
    vmin: float,
    vmax: float,
    colorbar: bool = True,
):
    from matplotlib.patches import Rectangle

    t = c.shape[0]
    masked = np.ma.masked_invalid(c)
    cmap = _cmap()
    im = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_facecolor("white")
    style = _cell_text_style(t)
    span = max(vmax - vmin, 1e-9)
    lw = 2.0 if t <= 12 else 1.2
    for i in range(t):
        for j in range(i + 1):
            bad = (i, j) in viol
            if bad:
                ax.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        facecolor=_VIOLATION_FACE,
                        edgecolor=_VIOLATION_EDGE,
                        hatch="//",
                        linewidth=lw,
                        zorder=3,
                    )
                )
            if style is not None:
                decimals, size = style
                level = (c[i, j] - vmin) / span
                # Blues runs light to dark: dark cells need white digits.
                color = "white" if level > 0.6 and not bad else "black"
                ax.text(
                    j,
                    i,
                    f"{c[i, j]:.{decimals}f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color=color,
                    fontweight="bold" if bad else "normal",
                    zorder=4,
                )
    # Segment boundaries: a replacement starts a new model lineage at that task.
    for r in replacement_tasks:
        if 0 < r < t:
            ax.plot([-0.5, r - 0.5], [r - 0.5, r - 0.5], color=_REPLACEMENT_COLOR, lw=1.2, ls="--")
            ax.plot(
                [r - 0.5, r - 0.5], [r - 0.5, t - 0.5], color=_REPLACEMENT_COLOR, lw=1.2, ls="--"
            )
    step = 1 if t <= 16 else 2
    ticks = [k for k in range(t) if k % step == 0 or k in replacement_tasks]
    labels = [f"{k + 1}*" if k in replacement_tasks else str(k + 1) for k in ticks]
    tick_size = 9 if t <= 12 else 7
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=tick_size)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=tick_size)
    for lab in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if lab.get_text().endswith("*"):
            lab.set_fontweight("bold")
            lab.set_color(_REPLACEMENT_COLOR)
    ax.set_xlabel("gallery model (task)")
    ax.set_ylabel("query model (task)")
    ax.set_xlim(-0.5, t - 0.5)
    ax.set_ylim(t - 0.5, -0.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    n_pairs = t * (t - 1) // 2
    note = (
        f"{len(viol)} of {n_pairs} pairs violate C[i][j] > C[j][j]"
        if n_pairs
        else "one model: no pairs to compare"
    )
    ax.set_title(f"{title}\n{note}", fontsize=10)
    if colorbar:
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label("1:N search accuracy (%)")
    return im


def _cmap():
    from matplotlib import colormaps

    # Blues: light for low accuracy, dark for high; the red violation overlay stays distinct.
    return colormaps["Blues"]


def _legend_note(ax, replacement_tasks: Sequence[int], t: int) -> None:
    """Key to the marks, placed in the blank upper triangle where it hides nothing."""
    from matplotlib.patches import Patch

    handles = [
        Patch(
            facecolor=_VIOLATION_FACE,
            edgecolor=_VIOLATION_EDGE,
            hatch="//",
            label="violation: C[i][j] ≤ C[j][j]",
        )
    ]
    if t == 1:
        return  # nothing can violate, and the one replacement mark explains itself
    if any(0 <= r < t for r in replacement_tasks):
        handles.append(
            Patch(
                facecolor="white",
                edgecolor=_REPLACEMENT_COLOR,
                linestyle="--",
                label="* model replaced at this task",
            )
        )
    if t >= 4:
        ax.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    else:  # the blank triangle is too small: put the key under the axis labels
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.22),
            fontsize=8,
            frameon=False,
        )


def plot_matrix(
    matrix: Matrix | np.ndarray,
    violations: Iterable[Any] | None,
    title: str,
    path: str | os.PathLike[str],
    replacement_tasks: Sequence[int] = (),
) -> None:
    """Heat map of one compatibility matrix (the paper's Figure 5), saved as PNG at ``path``.

    Rows are query models, columns gallery models, numbered from 1; the upper triangle is
    blank. Cells that break the criterion get a hatched light-red background with a red
    outline; replacement models (zero-based ``replacement_tasks``) are marked with ``*`` and
    set in bold, with dashed lines where a new lineage starts. ``violations=None``
    recomputes them from the matrix.
    """
    c = lower_triangle(matrix)
    viol = resolve_violations(c, violations)
    reps = sorted(set(replacement_tasks))
    side = _matrix_side(c.shape[0])
    fig = _new_figure(side + 1.2, side + 0.6)
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = float(np.nanmin(c)), float(np.nanmax(c))
    _draw_matrix(fig, ax, c, viol, title, reps, lo, hi if hi > lo else lo + 1.0)
    _legend_note(ax, reps, c.shape[0])
    _save(fig, path)


def _unpack_method(value: Any) -> tuple[Any, Any]:
    if isinstance(value, Mapping):
        return value["matrix"], value.get("violations")
    if isinstance(value, tuple) and len(value) == 2:
        return value
    return value, None  # a bare matrix: violations recomputed


def plot_matrices_grid(
    methods: Mapping[str, Any],
    path: str | os.PathLike[str],
    replacement_tasks: Sequence[int] = (),
) -> None:
    """Several methods' matrices side by side on one colour scale (the paper's Figure 5).

    ``methods`` maps a name to ``{"matrix", "violations"}`` (a metrics.json method entry
    works as is), a ``(matrix, violations)`` pair, or a bare matrix. One shared colour scale
    makes a collapse to chance in one method visible next to another's stable block.
    """
    if not methods:
        raise ValueError("plot_matrices_grid: no methods to plot")
    items = []
    for name, value in methods.items():
        matrix, violations = _unpack_method(value)
        c = lower_triangle(matrix, name=f"{name} matrix")
        items.append((name, c, resolve_violations(c, violations)))
    lo = min(float(np.nanmin(c)) for _, c, _ in items)
    hi = max(float(np.nanmax(c)) for _, c, _ in items)
    hi = hi if hi > lo else lo + 1.0
    t = max(c.shape[0] for _, c, _ in items)
    reps = sorted(set(replacement_tasks))
    ncols = min(len(items), 3)
    nrows = math.ceil(len(items) / ncols)
    side = _matrix_side(t)
    fig = _new_figure(side * ncols + 1.0, side * nrows + 0.8)
    axes = [fig.add_subplot(nrows, ncols, k + 1) for k in range(len(items))]
    im = None
    for ax, (name, c, viol) in zip(axes, items, strict=True):
        im = _draw_matrix(fig, ax, c, viol, name, reps, lo, hi, colorbar=False)
    fig.subplots_adjust(wspace=0.3, hspace=0.45)
    cb = fig.colorbar(im, ax=axes, fraction=0.025, pad=0.03)
    cb.set_label("1:N search accuracy (%)")
    _legend_note(axes[0], reps, t)
    _save(fig, path)


def _curve(value: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(value, tuple) and len(value) == 2:
        mean, std = value
        return np.asarray(mean, dtype=float), (None if std is None else np.asarray(std, float))
    return np.asarray(value, dtype=float), None


def _draw_aa(ax, curves: Mapping[str, Any], replacement_tasks: Sequence[int], title: str) -> None:
    from matplotlib import colormaps

    colors = colormaps["tab10"]
    t_max = 1
    for k, (name, value) in enumerate(curves.items()):
        mean, std = _curve(value)
        ts = np.arange(1, len(mean) + 1)
        t_max = max(t_max, len(mean))
        color = colors(k % 10)
        ax.plot(ts, mean, marker="o", ms=3.5, lw=1.8, color=color, label=name)
        if std is not None and np.any(std > 0):
            ax.fill_between(ts, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        marks = [r for r in replacement_tasks if 0 <= r < len(mean)]
        if marks:
            ax.scatter(
                [r + 1 for r in marks],
                mean[marks],
                s=90,
                marker="*",
                color="gold",
                edgecolors="black",
                linewidths=0.6,
                zorder=5,
            )
    for r in replacement_tasks:
        if 0 < r < t_max:
            ax.axvline(r + 1, color=_REPLACEMENT_COLOR, ls="--", lw=1.0, alpha=0.8)
    if replacement_tasks:
        ax.scatter(
            [],
            [],
            s=90,
            marker="*",
            color="gold",
            edgecolors="black",
            linewidths=0.6,
            label="model replacement",
        )
    ax.set_xlabel("task t")
    ax.set_ylabel("AA$_t$ (%)")
    ax.set_title(title, fontsize=10)
    step = 1 if t_max <= 16 else 5
    ticks = sorted({1, *range(step, t_max + 1, step)})
    if t_max - ticks[-1] >= step / 2:  # label the last task unless it would collide
        ticks.append(t_max)
    ax.set_xticks(ticks)
    ax.set_xlim(0.6, t_max + 0.4)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_aa(
    curves: Mapping[str, Any],
    replacement_tasks: Sequence[int],
    path: str | os.PathLike[str],
    title: str = "AA$_t$: mean accuracy over all model pairs up to task t",
    no_replacement: Mapping[str, Any] | None = None,
    no_replacement_title: str = "without replacements",
) -> None:
    """AA_t against t = 1..T for every method (the paper's Figure 4), saved as PNG.

    ``curves`` maps a method to its AA list, or to ``(mean, std)`` over seeds, drawn as a
    shaded band. Replacements (zero-based task ids) get a gold star on each curve and, after
    the first task, a dashed vertical line. ``no_replacement`` adds a second panel with the
    same methods run without replacements, the paper's comparison of the two scenarios.
    """
    if not curves:
        raise ValueError("plot_aa: no curves to plot")
    panels = 2 if no_replacement else 1
    fig = _new_figure(6.0 * panels, 4.2)
    ax = fig.add_subplot(1, panels, 1)
    _draw_aa(ax, curves, sorted(set(replacement_tasks)), title)
    if no_replacement:
        ax2 = fig.add_subplot(1, panels, 2, sharey=ax)
        _draw_aa(ax2, no_replacement, [0] if 0 in replacement_tasks else [], no_replacement_title)
    fig.tight_layout()
    _save(fig, path)


# --------------------------------------------------------------------------- markdown


def _method_aa(entry: Mapping[str, Any]) -> tuple[list[float], list[float] | None, int]:
    """Mean and sample std of AA_t over seeds (std None with one seed), and the seed count."""
    curves = []
    for r in _runs(entry):
        aa = r.get("AA")
        curves.append([float(a) for a in aa] if aa is not None else aa_curve(r["matrix"]))
    arr = np.asarray(curves, dtype=float)
    mean = arr.mean(axis=0).tolist()
    std = arr.std(axis=0, ddof=1).tolist() if len(curves) > 1 else None
    return mean, std, len(curves)


def _md_escape(text: Any) -> str:
    """Method names and other free text inside a markdown table cell."""
    return str(text).replace("|", "\\|")


def _md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _model_label(k: int, reps: Sequence[int]) -> str:
    return f"**{k + 1}\\***" if k in reps else str(k + 1)


def markdown_matrix(
    matrix: Matrix | np.ndarray, violations: Iterable[Any] | None, replacement_tasks=()
) -> str:
    """A compatibility matrix as a markdown table; violating cells bold with a ⚠."""
    c = lower_triangle(matrix)
    viol = resolve_violations(c, violations)
    t = c.shape[0]
    reps = sorted(set(replacement_tasks))
    digits = 2 if t <= MAX_CELL_TEXT_T else 1
    header = ["query ↓ gallery →", *(_model_label(j, reps) for j in range(t))]
    rows = []
    for i in range(t):
        cells = []
        for j in range(t):
            if j > i:
                cells.append("")
            elif (i, j) in viol:
                cells.append(f"**{c[i, j]:.{digits}f} ⚠**")
            else:
                cells.append(f"{c[i, j]:.{digits}f}")
        rows.append([_model_label(i, reps), *cells])
    return _md_table(header, rows)


MAX_LISTED_VIOLATIONS = 12
"""A collapsed baseline breaks every pair (465 with T = 31); the worst few make the point."""


def _violation_lines(c: np.ndarray, viol: set[tuple[int, int]]) -> list[str]:
    """One-based lines, worst gap first when they must be cut, else in matrix order."""
    cells = sorted(viol)
    if len(cells) > MAX_LISTED_VIOLATIONS:
        cells = sorted(cells, key=lambda ij: c[ij] - c[ij[1], ij[1]])[:MAX_LISTED_VIOLATIONS]
    lines = [
        f"- C[{i + 1}][{j + 1}] = {c[i, j]:.2f} ≤ C[{j + 1}][{j + 1}] = {c[j, j]:.2f} "
        f"(query model {i + 1} on gallery model {j + 1}: {c[i, j] - c[j, j]:+.2f} pp)"
        for i, j in cells
    ]
    if len(viol) > len(cells):
        lines.append(
            f"- … and {len(viol) - len(cells)} more (the {len(cells)} largest drops shown)"
        )
    return lines


def _duration(seconds: float) -> str:
    s = round(float(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m:02d} min {s:02d} s"
    if m:
        return f"{m} min {s:02d} s"
    return f"{float(seconds):.1f} s"


HOW_TO_READ = """\
- **Compatibility matrix** C: C[i][j] is the 1:N search accuracy (%) when the query set is \
encoded by model i (the model after task i) and the gallery by model j, for j ≤ i; the \
diagonal C[i][i] is each model's self-test. Models are numbered from 1; `*` marks a model \
(re)placed by a provider model at that task.
- **Compatibility criterion** (BCT, strict): model i is compatible with the older model j \
when C[i][j] > C[j][j], i.e. searching the old gallery with the new model beats the old \
model. A cell where this fails is a **violation** (⚠ in the tables, red hatching in the plots).
- **AC** (average compatibility) = the fraction of the T(T-1)/2 pairs j < i with \
C[i][j] > C[j][j]; 1.0 means every update was compatible with every older model.
- **AM** (average multi-model accuracy) = the mean of the lower triangle of C, diagonal \
included. **AA_t** is the same mean over the top-left t × t block: what a service that has \
gone through t updates without backfilling sees on average.
- **BC** (backward compatibility) = the mean over i < T of C[T][i] − C[i][i]: how the \
final model searching each older gallery compares with that gallery's own model (positive: \
the last update helps every old gallery without backfilling).
- **FC** (forward compatibility) = the mean over i ≥ 2 of C[i][i−1] − C[i][i]: how each \
new model searching the previous model's gallery compares with its own self-test (near \
zero: nothing is lost by postponing the backfill). \
BC and FC are undefined (n/a) with a single task.
- Values are mean ± sample standard deviation over seeds where there is more than one seed; \
matrices and violation lists are shown for the first seed."""


def render_markdown(
    metrics: Mapping[str, Any],
    run_dir: str | os.PathLike[str],
    extra_sections: Sequence[tuple[str, str]] = (),
) -> str:
    """The text of report.md for a validated metrics dict.

    Image links are relative (``plots/...``) and only emitted for plots present under
    ``run_dir/plots``, so the report stays valid when the directory is moved or the plots
    were not drawn. ``extra_sections`` are ``(title, markdown body)`` pairs appended at the
    end, for modules (theory checks, analyses) that add their own findings.
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    meta = metrics.get("_meta") if isinstance(metrics.get("_meta"), Mapping) else {}
    methods = method_names(metrics)
    reps = _replacement_tasks(metrics)
    first = _runs(metrics[methods[0]])
    t = lower_triangle(first[0]["matrix"]).shape[0]
    seeds = meta.get("seeds") or [r.get("seed") for r in first if r.get("seed") is not None]

    def img(name: str, alt: str) -> str | None:
        return f"![{alt}](plots/{name})" if (plots / name).is_file() else None

    out: list[str] = [f"# compatkit run report: {run_dir.name or run_dir}", ""]
    out += ["## Run", ""]
    if meta.get("dataset") is not None:
        out.append(f"- Dataset: {meta['dataset']}")
    out.append(f"- Methods: {', '.join(methods)}")
    if seeds:
        out.append(f"- Seeds: {', '.join(str(s) for s in seeds)}")
    out.append(f"- Tasks (T): {meta.get('num_tasks', t)}")
    if meta.get("no_replacement"):
        out.append("- Replacements: none (no-replacement run; the first model is the provider's)")
    if reps:
        out.append(
            "- Replacement tasks: "
            + ", ".join(str(r + 1) for r in reps)
            + f" (zero-based task ids {', '.join(str(r) for r in reps)})"
        )
    if _is_number(meta.get("query_images")) and _is_number(meta.get("gallery_images")):
        out.append(
            f"- Evaluation: {meta['query_images']:,} query images, "
            f"{meta['gallery_images']:,} gallery images"
        )
    if meta.get("device") is not None:
        precision = f" ({meta['precision']})" if meta.get("precision") else ""
        out.append(f"- Device: {meta['device']}{precision}")
    if _is_number(meta.get("wall_time_s")):
        out.append(f"- Wall time: {_duration(meta['wall_time_s'])}")
    if _is_number(meta.get("eval_seconds")):
        out.append(f"- Evaluation time: {_duration(meta['eval_seconds'])}")
    if meta.get("compatkit_version") is not None:
        out.append(f"- compatkit version: {meta['compatkit_version']}")
    out.append("")

    table = comparison_table(metrics)
    out += ["## Comparison", ""]
    out.append(
        _md_table(
            [table_header(k) for k in TABLE_COLUMNS],
            [[_md_escape(row[k]) for k in TABLE_COLUMNS] for row in table],
        )
    )
    n_seeds = max(row["seeds"] for row in table)
    out += [
        "",
        "AC is a fraction of pairs; AM and the self-test are in %, BC and FC in percentage "
        "points" + (f"; mean ± sample std over {n_seeds} seeds." if n_seeds > 1 else "; one seed."),
        "",
    ]
    for name, alt in (("aa.png", "AA_t per task"), ("matrices.png", "compatibility matrices")):
        link = img(name, alt)
        if link:
            out += [link, ""]

    out += ["## AA_t per task", ""]
    aa = {m: _method_aa(metrics[m]) for m in methods}
    rows = []
    for k in range(t):
        row: list[Any] = [_model_label(k, reps)]
        for m in methods:
            mean, std, _ = aa[m]
            row.append(f"{mean[k]:.2f}" + (f" ± {std[k]:.2f}" if std is not None else ""))
        rows.append(row)
    out += [_md_table(["t", *(_md_escape(m) for m in methods)], rows), ""]

    out += ["## How to read this", "", HOW_TO_READ, ""]

    for m in methods:
        runs = _runs(metrics[m])
        run0 = runs[0]
        c = lower_triangle(run0["matrix"])
        viol = resolve_violations(c, run0.get("violations"))
        seed_note = f" (seed {run0['seed']})" if run0.get("seed") is not None else ""
        out += [f"## Method: {m}", "", f"### Compatibility matrix{seed_note}", ""]
        link = img(f"matrix_{safe_name(m)}.png", f"{m} compatibility matrix")
        if link:
            out += [link, ""]
        out += [markdown_matrix(c, run0.get("violations"), reps), ""]
        if viol:
            out += [f"Violations ({len(viol)} of {t * (t - 1) // 2} pairs):", ""]
            out += [*_violation_lines(c, viol), ""]
        elif t > 1:
            out += ["No violations: every newer model beats each older model's self-test.", ""]
        if len(runs) > 1:
            out += ["### Per seed", ""]
            seed_rows = []
            for r in runs:
                n_v = len(resolve_violations(r["matrix"], r.get("violations")))
                seed_rows.append(
                    [
                        r.get("seed", "?"),
                        *("n/a" if r.get(k) is None else f"{r[k]:.2f}" for k in METRIC_KEYS),
                        n_v,
                    ]
                )
            out += [
                _md_table(
                    ["seed", *(table_header(k) for k in METRIC_KEYS), "violations"], seed_rows
                ),
                "",
            ]

    for title, body in extra_sections:
        out += [f"## {title}", "", body.strip(), ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- the report


def safe_name(name: str) -> str:
    """A method name usable in a file name (``matrix_<method>.png``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "method"


def _analysis_section(run_dir: Path) -> list[tuple[str, str]]:
    """The optional ``analysis.json`` hook: a dict whose ``markdown`` string is appended."""
    p = run_dir / "analysis.json"
    if not p.is_file():
        return []
    data = read_json(p)
    if isinstance(data, Mapping) and isinstance(data.get("markdown"), str):
        title = data.get("title") if isinstance(data.get("title"), str) else "Analysis"
        return [(title, data["markdown"])]
    return []


def _write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Regenerate ``plots/`` and ``report.md`` of a run directory from its metrics.json.

    Writes ``plots/matrix_<method>.png`` (first seed), ``plots/matrices.png`` (all methods,
    one colour scale), ``plots/aa.png`` (AA_t, mean ± std over seeds) and ``report.md``;
    returns the report's path. An ``analysis.json`` holding ``{"markdown": ...}`` (and
    optionally ``"title"``) is appended as its own section.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFileNotFound(f"run directory not found: {run_dir}")
    metrics = load_metrics(run_dir)
    extra = _analysis_section(run_dir)
    methods = method_names(metrics)
    reps = _replacement_tasks(metrics)
    plots = run_dir / "plots"
    for m in methods:
        run0 = _runs(metrics[m])[0]
        seed = f" (seed {run0['seed']})" if run0.get("seed") is not None else ""
        plot_matrix(
            run0["matrix"],
            run0.get("violations"),
            f"{m}{seed}",
            plots / f"matrix_{safe_name(m)}.png",
            reps,
        )
    plot_matrices_grid({m: _runs(metrics[m])[0] for m in methods}, plots / "matrices.png", reps)
    curves = {}
    for m in methods:
        mean, std, _ = _method_aa(metrics[m])
        curves[m] = (mean, std)
    meta = metrics.get("_meta") if isinstance(metrics.get("_meta"), Mapping) else {}
    title = "AA$_t$" + (" (no replacements)" if meta.get("no_replacement") else "")
    if any(std is not None for _, std in curves.values()):
        title += ", mean ± std over seeds"
    plot_aa(curves, reps, plots / "aa.png", title=title)
    path = run_dir / "report.md"
    _write_text_atomic(path, render_markdown(metrics, run_dir, extra))
    return path
