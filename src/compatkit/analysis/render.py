"""The analysis section of a run's report: verdicts, Definition 1 tables, stationarity.

Turns the dict :func:`compatkit.analysis.run.analyze_run` computes (and writes to
``analysis.json``) into text: one verdict line per method, seed and metric; the per-pair
tables; the stationarity table; links to the figures the analysis drew. Paper: Biondi et al.,
CVPR 2024, Definition 1 (from BCT), Theorem 1 and Corollary 1. Models are numbered from 1;
``*`` marks a replacement model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from ..report import safe_name

__all__ = ["MAX_PAIR_TABLE_T", "max_frac", "render_markdown", "stationarity_lines", "verdict_lines"]

MAX_PAIR_TABLE_T = 8
"""Above this many tasks the per-pair tables get too long for a report; the heat maps stay."""


def _count(s: Mapping[str, Any], key: str) -> str:
    return f"{s[key]}/{s['pairs']}"


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per method, seed and metric: where Definition 1 holds in expectation."""
    lines = []
    for m, entry in result["methods"].items():
        for seed, r in entry["seeds"].items():
            for metric, s in r["summary"].items():
                a = s["all"]
                if a["pairs"] == 0:
                    lines.append(f"{m} (seed {seed}, {metric}): one model, no pairs to check")
                    continue
                line = (
                    f"{m} (seed {seed}, {metric}): same-class inequality holds in expectation "
                    f"for {_count(a, 'same_holds')} pairs, different-class "
                    f"{_count(a, 'diff_holds')}, both {_count(a, 'both_hold')}"
                )
                parts = []
                for kind, label in (
                    ("consecutive", "consecutive pairs"),
                    ("across_replacement", "across a replacement"),
                ):
                    k = s[kind]
                    if k["pairs"]:
                        parts.append(
                            f"{label}: same {_count(k, 'same_holds')}, "
                            f"different {_count(k, 'diff_holds')}"
                        )
                if parts:
                    line += " (" + "; ".join(parts) + ")"
                line += (
                    f"; per pair at best {max_frac(r['pairs'], metric, 'same'):.2f} / "
                    f"{max_frac(r['pairs'], metric, 'diff'):.2f} of sample pairs satisfy them"
                )
                if a["cross_model_class_margin_mean"] is not None:
                    line += (
                        "; class margin E[d diff] - E[d same] across models "
                        f"{a['cross_model_class_margin_mean']:.3f} (old model alone "
                        f"{a['old_model_class_margin_mean']:.3f})"
                    )
                lines.append(line)
    return lines


def stationarity_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per method and seed: does the spread shrink while the vertex angle stays put?"""
    lines = []
    for m, entry in result["methods"].items():
        for seed, r in entry["seeds"].items():
            st = r["stationarity"]
            if not st:
                continue
            spread = [s["mean_spread"] for s in st]
            steps = len(spread) - 1
            shrinks = sum(b < a for a, b in pairwise(spread))
            line = (
                f"{m} (seed {seed}): class spread {spread[0]:.3f} -> {spread[-1]:.3f} "
                f"(shrinks at {shrinks}/{steps} updates)"
            )
            ang = [s["mean_angle_to_vertex_deg"] for s in st]
            if all(a is not None for a in ang):
                jump = max((abs(b - a) for a, b in pairwise(ang)), default=0.0)
                line += (
                    f"; angle to vertex {ang[0]:.1f}° -> {ang[-1]:.1f}° "
                    f"(largest change between consecutive models {jump:.1f}°)"
                )
            else:
                line += "; no fixed vertex (learnable head)"
            drift = [s["centre_drift_prev_deg"] for s in st[1:]]
            if drift:
                line += (
                    f"; class centres move {float(np.mean(drift)):.1f}° per update on average "
                    f"(at most {max(drift):.1f}°)"
                )
            lines.append(line)
    return lines


def max_frac(pairs: Sequence[Mapping[str, Any]], metric: str, group: str) -> float:
    """Largest per-pair satisfaction fraction over model pairs (Corollary 1: below 1)."""
    vals = [p[metric][group]["frac"] for p in pairs if p[metric][group]["frac"] is not None]
    return max(vals) if vals else float("nan")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _model(k: int, reps: Sequence[int]) -> str:
    return f"{k + 1}*" if k in reps else str(k + 1)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _expect(g: Mapping[str, Any]) -> str:
    """``E_new vs E_old (gap ± 95 % half-width)``: the gap is paired, so its interval is tight."""
    e, o, gap = g["expect_new"], g["expect_old"], g["gap_new_minus_old"]
    if e["mean"] is None:
        return "n/a"
    hw = f" ± {gap['half_width']:.4f}" if gap.get("half_width") is not None else ""
    return f"{e['mean']:.4f} vs {o['mean']:.4f} ({gap['mean']:+.4f}{hw})"


def render_markdown(result: Mapping[str, Any]) -> str:
    """The report section: verdicts, summary tables, per-pair tables, stationarity, figures."""
    s = result["settings"]
    reps = result["replacement_tasks"]
    t_n = result["num_tasks"]
    metric0 = s["metrics"][0]
    plots = set(result.get("plots") or [])
    out = [
        "Definition 1 (Biondi et al., CVPR 2024, from BCT) checked on the evaluation images: "
        "for each pair of models k < t, the query features of model t and of model k against "
        "the gallery features of model k, on L2-normalised features "
        f"({', '.join(s['metrics'])}); up to {s['max_pairs_per_group']:,} sample pairs per "
        "group, sampled uniformly when a group has more. Theorem 1: a stationary (d-Simplex) "
        "representation satisfies both inequalities *in expectation*; Corollary 1: no "
        "representation satisfies them for every sample pair, so the per-pair fractions stay "
        "below 1. Models are numbered from 1; * marks a replacement model.",
        "",
        "### Verdicts",
        "",
        *[f"- {line}" for line in result["verdicts"]],
        "",
    ]
    for note in result.get("notes") or []:
        out += [f"Note: {note}", ""]

    header = [
        "method",
        "seed",
        "metric",
        "same holds",
        "different holds",
        "both",
        "consecutive (same / diff)",
        "across replacement (same / diff)",
        "per-pair same (mean, min)",
        "per-pair diff (mean, min)",
        "C[t][k] > C[k][k]",
    ]
    rows = []
    for m, entry in result["methods"].items():
        for seed, r in entry["seeds"].items():
            for metric, sm in r["summary"].items():
                a, c, x = sm["all"], sm["consecutive"], sm["across_replacement"]
                rows.append(
                    [
                        m,
                        seed,
                        metric,
                        _count(a, "same_holds"),
                        _count(a, "diff_holds"),
                        _count(a, "both_hold"),
                        f"{_count(c, 'same_holds')} / {_count(c, 'diff_holds')}",
                        f"{_count(x, 'same_holds')} / {_count(x, 'diff_holds')}"
                        if x["pairs"]
                        else "none",
                        f"{_fmt(a['same_frac_mean'])}, {_fmt(a['same_frac_min'])}",
                        f"{_fmt(a['diff_frac_mean'])}, {_fmt(a['diff_frac_min'])}",
                        _count(a, "empirical_compatible"),
                    ]
                )
    out += ["### Definition 1 in expectation", "", _table(header, rows), ""]
    out += [
        '"holds" compares the two expected distances; the paired difference\'s 95 % '
        "interval is in analysis.json (`gap_new_minus_old`), with the count of pairs where it "
        "excludes 0 (`same_significant`, `diff_significant`). The last column is the "
        "empirical criterion of the compatibility matrix, for comparison. The class margin "
        "E[d | different class] - E[d | same class] of new queries against the old gallery "
        "(in the verdicts) tells a compatible update from one whose features are simply far "
        "from the old gallery: the different-class inequality holds in both cases, but only "
        "the first keeps a positive margin.",
        "",
    ]

    seed0 = str(s["seeds"][0])

    for m, entry in result["methods"].items():
        r = entry["seeds"].get(seed0)
        if r is None or not r["pairs"]:
            continue
        out += [f"### Definition 1 per model pair: {m} (seed {seed0}, {metric0})", ""]
        img = f"plots/definition1_{safe_name(m)}.png"
        if img in plots:
            out += [f"![Definition 1, {m}]({img})", ""]
        if t_n <= MAX_PAIR_TABLE_T:
            prow = []
            for p in r["pairs"]:
                g_s, g_d = p[metric0]["same"], p[metric0]["diff"]
                prow.append(
                    [
                        _model(p["t"], reps),
                        _model(p["k"], reps),
                        "yes" if p["replacements_between"] else "",
                        _fmt(g_s["frac"]),
                        _expect(g_s),
                        "✓" if g_s["holds_in_expectation"] else "✗",
                        _fmt(g_d["frac"]),
                        _expect(g_d),
                        "✓" if g_d["holds_in_expectation"] else "✗",
                        "✓" if p.get("empirical", {}).get("compatible") else "✗",
                    ]
                )
            out += [
                _table(
                    [
                        "t",
                        "k",
                        "across replacement",
                        "same: frac",
                        "same: E new vs E old (gap)",
                        "same holds",
                        "diff: frac",
                        "diff: E new vs E old (gap)",
                        "diff holds",
                        "C[t][k] > C[k][k]",
                    ],
                    prow,
                ),
                "",
            ]

    out += ["### Stationarity", ""]
    out += [*[f"- {line}" for line in result.get("stationarity_verdicts") or []], ""]
    if "plots/stationarity.png" in plots:
        out += ["![stationarity](plots/stationarity.png)", ""]
    srows = []
    for m, entry in result["methods"].items():
        r = entry["seeds"].get(seed0)
        if r is None:
            continue
        for st in r["stationarity"]:
            srows.append(
                [
                    m,
                    _model(st["task"], reps),
                    _fmt(st["mean_angle_to_vertex_deg"], 1),
                    _fmt(st["mean_direction_angle_deg"], 1),
                    _fmt(st["mean_spread"], 3),
                    _fmt(st["centre_separation_deg"], 1),
                    _fmt(st["centre_drift_prev_deg"], 1),
                    _fmt(st["centre_drift_first_deg"], 1),
                ]
            )
    out += [
        _table(
            [
                "method",
                "model",
                "angle to vertex (°)",
                "class centre to vertex (°)",
                "class spread",
                "angle between class centres (°)",
                "centre drift from previous (°)",
                "centre drift from model 1 (°)",
            ],
            srows,
        ),
        "",
        f"Seed {seed0}, query and gallery images together. Angles are means over classes of "
        "the angle between each L2-normalised feature (or the class-mean direction) and the "
        "class's vertex of the model's head; n/a for learnable heads, whose rows move. The "
        "spread is the mean distance of the normalised features from their class-mean "
        "direction (the hyperball radius of Theorem 1): it should shrink as models improve "
        "while the centres stay at their vertices. The angle between class centres tells a "
        "tight representation from a collapsed one (every class in one place).",
        "",
    ]

    figs = []
    if "plots/loss_across_updates.png" in plots:
        figs += [
            "Figure 3, training loss across model updates (per epoch, every task in turn; "
            "dashed lines: replacements):",
            "",
            "![loss across updates](plots/loss_across_updates.png)",
            "",
        ]
    if "plots/aa_replacement_vs_none.png" in plots:
        figs += [
            "Figure 4, AA_t with and without replacements:",
            "",
            "![AA with and without replacements](plots/aa_replacement_vs_none.png)",
            "",
        ]
    if figs:
        figs += [
            "Figure 5, the compatibility matrices, is the report's matrices figure (the run's "
            "first seed, violations hatched in red) near the top of this report.",
            "",
        ]
    if figs:
        out += ["### Paper figures from this run", "", *figs]
    return "\n".join(out).rstrip() + "\n"
