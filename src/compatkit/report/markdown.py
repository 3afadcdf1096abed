"""report.md: the run's comparison, compatibility and plasticity per task, matrices, how to read.

Image links are relative (``plots/...``) and only emitted for plots present under
``run_dir/plots``, so the report stays valid when the directory is moved or the plots were
not drawn. Models and tasks are numbered from 1; ``*`` marks a replacement model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.files import atomic_write_text, read_json
from ..runtime.layout import RunDir
from .metrics_file import (
    Matrix,
    RunFileNotFound,
    is_number,
    load_metrics,
    lower_triangle,
    method_names,
    method_runs,
    replacement_tasks,
    resolve_violations,
)
from .plots import (
    MAX_CELL_TEXT_T,
    gap_limit,
    plot_aa,
    plot_matrices_grid,
    plot_matrix,
    plot_plasticity,
)
from .seeds import seeds_section
from .table import (
    chance_levels,
    comparison_table,
    gallery_chance,
    md_table,
    method_aa,
    method_local,
    run_value,
    table_columns,
    table_header,
)


def _md_escape(text: Any) -> str:
    """Method names and other free text inside a markdown table cell."""
    return str(text).replace("|", "\\|")


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
    return md_table(header, rows)


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
diagonal C[i][i] is each model's self-test. Models and tasks are numbered from 1; `*` marks \
a replacement model: at that task a provider's model, trained elsewhere, took over and \
was fine-tuned on the task.
- **Compatibility criterion** (BCT, strict): model i is compatible with the older model j \
when C[i][j] > C[j][j], i.e. searching the old gallery with the new model beats the old \
model. A cell where this fails is a **violation** (⚠ in the tables, red hatching in the plots). \
The plots colour each cell by C[i][j] − C[j][j] on one scale centred at zero for every figure \
of the report: blue where the newer model beats the old gallery's own (compatible), red where \
it does not, white on the diagonal; the printed numbers are the accuracies C[i][j].
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
- **Local-class accuracy** (plasticity): the classification accuracy (%) of each task model \
on held-out test images of the local classes seen so far (model t: the classes of tasks \
1..t), arg-max over the head rows of those classes; chance is 100 / (classes seen). It says \
how much the local learner learned, which compatibility alone cannot say: a model that does \
not move is trivially compatible. "final local acc." is the last model's, "mean local acc." \
the mean over the T models. "at the task's start" is the accuracy, on the same classes, of \
the model the task began from (the provider at a replacement, else the previous model; fixed \
heads only, as a learnable head begins a new class with random rows), and "gain over start" \
the mean over tasks of the difference: what the local learner itself added. A replacement \
model includes whatever its provider already knew about the local classes.
- Values are mean ± sample standard deviation over seeds where there is more than one seed, \
with 95 % intervals in *Seeds*; matrices and violation lists are shown for the first seed and \
marked so: a single seed's numbers, which another seed, thread count or CPU changes."""


def _per_task_section(
    metrics: Mapping[str, Any], methods: Sequence[str], reps: Sequence[int], t: int, local: bool
) -> list[str]:
    """AA_t of every method per task and, when recorded, the local-class accuracy beside it."""

    def cell(curve, k: int) -> str:
        mean, std, _ = curve
        if mean[k] is None or not np.isfinite(mean[k]):
            return "n/a"
        spread = f" ± {std[k]:.2f}" if std is not None and np.isfinite(std[k]) else ""
        return f"{mean[k]:.2f}{spread}"

    aa = {m: method_aa(metrics[m]) for m in methods}
    acc = {m: method_local(metrics[m]) for m in methods} if local else {}
    start = {m: method_local(metrics[m], "local_start") for m in methods} if local else {}
    chance = chance_levels(metrics) if local else None
    header = ["t"]
    for m in methods:
        header.append(f"{_md_escape(m)}: AA_t" if local else _md_escape(m))
        if local:
            header.append(f"{_md_escape(m)}: local acc.")
            if start[m] is not None:
                header.append(f"{_md_escape(m)}: at the task's start")
    if chance is not None:
        header.append("chance")
    rows = []
    for k in range(t):
        row: list[Any] = [_model_label(k, reps)]
        for m in methods:
            row.append(cell(aa[m], k))
            if local:
                row.append("n/a" if acc[m] is None else cell(acc[m], k))
                if start[m] is not None:
                    row.append(cell(start[m], k))
        if chance is not None:
            row.append(f"{chance[k]:.1f}" if k < len(chance) else "")
        rows.append(row)
    title = (
        "## Per task: compatibility (AA_t) and plasticity (local-class accuracy, %)"
        if local
        else "## AA_t per task"
    )
    return [title, "", md_table(header, rows), ""]


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
    plots = RunDir(run_dir).plots
    meta = metrics.get("_meta") if isinstance(metrics.get("_meta"), Mapping) else {}
    methods = method_names(metrics)
    reps = replacement_tasks(metrics)
    first = method_runs(metrics[methods[0]])
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
    later = [r for r in reps if r > 0]
    if later:  # task 1 always starts from the first provider; the replacements come after
        out.append(
            "- Replacements: the model is replaced by a new provider at task "
            + ", ".join(str(r + 1) for r in later)
            + f" (config `replacement_tasks: [{', '.join(str(r) for r in later)}]`, zero-based)"
        )
    if is_number(meta.get("query_images")) and is_number(meta.get("gallery_images")):
        out.append(
            f"- Evaluation: {meta['query_images']:,} query images, "
            f"{meta['gallery_images']:,} gallery images"
        )
    if meta.get("device") is not None:
        precision = f" ({meta['precision']})" if meta.get("precision") else ""
        out.append(f"- Device: {meta['device']}{precision}")
    if is_number(meta.get("wall_time_s")):
        out.append(f"- Wall time: {_duration(meta['wall_time_s'])}")
    if is_number(meta.get("eval_seconds")):
        out.append(f"- Evaluation time: {_duration(meta['eval_seconds'])}")
    if meta.get("compatkit_version") is not None:
        out.append(f"- compatkit version: {meta['compatkit_version']}")
    out.append("")

    table = comparison_table(metrics)
    columns = table_columns(table)
    out += ["## Comparison", ""]
    out.append(
        md_table(
            [table_header(k) for k in columns],
            [[_md_escape(row[k]) for k in columns] for row in table],
        )
    )
    n_seeds = max(row["seeds"] for row in table)
    has_local = "local_final" in columns
    out += [
        "",
        "AC is a fraction of pairs; AM"
        + (", the local-class accuracies" if has_local else "")
        + " and the self-test are in %, BC and FC in percentage points"
        + (
            f"; mean ± sample std over {n_seeds} seeds."
            if n_seeds > 1
            else f"; **single seed{_seed_ids(seeds)}**: no spread is known, and another seed, "
            "thread count or CPU gives other numbers; run several seeds "
            "(`--set 'seeds=[42,43,44]'`) for means with 95 % intervals."
        ),
        "",
    ]
    if has_local:
        chance = chance_levels(metrics)
        out += [
            "Compatibility and plasticity side by side: the local-class accuracy says how much "
            "the local learner learned"
            + (f" (chance: {chance[-1]:.1f} % for the final model)" if chance else "")
            + "; see *How to read this*.",
            "",
        ]
    for name, alt in (
        ("plasticity.png" if has_local else "aa.png", "AA_t and local-class accuracy per task"),
        ("matrices.png", "compatibility matrices"),
    ):
        link = img(name, alt)
        if link:
            out += [link, ""]

    out += seeds_section(metrics)
    out += _per_task_section(metrics, methods, reps, t, has_local)

    out += ["## How to read this", "", HOW_TO_READ, ""]

    for m in methods:
        runs = method_runs(metrics[m])
        run0 = runs[0]
        c = lower_triangle(run0["matrix"])
        viol = resolve_violations(c, run0.get("violations"))
        seed_note = f" (seed {run0['seed']})" if run0.get("seed") is not None else ""
        if len(runs) > 1:
            seed_note = (
                f" (seed {run0.get('seed', '?')}, a single seed of {len(runs)}: the means are "
                "in the comparison table)"
            )
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
            keys = [k for k in columns if k not in ("method", "violations")]
            out += ["### Per seed", ""]
            seed_rows = []
            for r in runs:
                n_v = len(resolve_violations(r["matrix"], r.get("violations")))
                vals = {k: run_value(r, k) for k in keys}
                seed_rows.append(
                    [
                        r.get("seed", "?"),
                        *("n/a" if vals[k] is None else f"{vals[k]:.2f}" for k in keys),
                        n_v,
                    ]
                )
            out += [
                md_table(["seed", *(table_header(k) for k in keys), "violations"], seed_rows),
                "",
            ]

    for title, body in extra_sections:
        out += [f"## {title}", "", body.strip(), ""]
    return "\n".join(out).rstrip() + "\n"


def _seed_ids(seeds: Sequence[Any]) -> str:
    return f" ({', '.join(str(s) for s in seeds)})" if seeds else ""


# --------------------------------------------------------------------------- the report


def safe_name(name: str) -> str:
    """A method name usable in a file name (``matrix_<method>.png``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "method"


def _analysis_section(run_dir: Path) -> list[tuple[str, str]]:
    """The optional ``analysis.json`` hook: a dict whose ``markdown`` string is appended."""
    p = RunDir(run_dir).analysis
    if not p.is_file():
        return []
    data = read_json(p)
    if isinstance(data, Mapping) and isinstance(data.get("markdown"), str):
        title = data.get("title") if isinstance(data.get("title"), str) else "Analysis"
        return [(title, data["markdown"])]
    return []


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Regenerate ``plots/`` and ``report.md`` of a run directory from its metrics.json.

    Writes ``plots/matrix_<method>.png`` (first seed), ``plots/matrices.png`` (all methods,
    one colour scale), ``plots/plasticity.png`` (AA_t and local-class accuracy per task,
    mean ± std over seeds; ``plots/aa.png``, AA_t alone, for a run that did not record local
    accuracy) and ``report.md``; returns the report's path. An ``analysis.json`` holding
    ``{"markdown": ...}`` (and optionally ``"title"``) is appended as its own section.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFileNotFound(f"run directory not found: {run_dir}")
    metrics = load_metrics(run_dir)
    extra = _analysis_section(run_dir)
    methods = method_names(metrics)
    reps = replacement_tasks(metrics)
    plots = RunDir(run_dir).plots
    first = {m: method_runs(metrics[m])[0] for m in methods}
    limit = gap_limit(r["matrix"] for r in first.values())  # one colour scale for every figure
    for m, run0 in first.items():
        seed = f" (seed {run0['seed']})" if run0.get("seed") is not None else ""
        plot_matrix(
            run0["matrix"],
            run0.get("violations"),
            f"{m}{seed}",
            plots / f"matrix_{safe_name(m)}.png",
            reps,
            limit,
        )
    plot_matrices_grid(first, plots / "matrices.png", reps, limit)
    curves = {}
    for m in methods:
        mean, std, _ = method_aa(metrics[m])
        curves[m] = (mean, std)
    meta = metrics.get("_meta") if isinstance(metrics.get("_meta"), Mapping) else {}
    spread = any(std is not None for _, std in curves.values())
    aa_chance = gallery_chance(meta)
    local = {m: c for m in methods if (c := method_local(metrics[m])) is not None}
    if local:
        # Compatibility and plasticity in one figure; AA_t alone would repeat its left panel.
        note = " (no replacements)" if meta.get("no_replacement") else ""
        plot_plasticity(
            curves,
            {m: (mean, std) for m, (mean, std, _) in local.items()},
            reps,
            plots / "plasticity.png",
            chance=chance_levels(metrics),
            seeds_note=note + (", mean ± std over seeds" if spread else ""),
            aa_chance=aa_chance,
            starts={
                m: (mean, std)
                for m in local
                if (c := method_local(metrics[m], "local_start")) is not None
                for mean, std, _ in [c]
            },
        )
        (plots / "aa.png").unlink(missing_ok=True)
    else:
        title = "AA$_t$" + (" (no replacements)" if meta.get("no_replacement") else "")
        if spread:
            title += ", mean ± std over seeds"
        plot_aa(curves, reps, plots / "aa.png", title=title, chance=aa_chance)
    path = RunDir(run_dir).report
    atomic_write_text(path, render_markdown(metrics, run_dir, extra))
    return path
