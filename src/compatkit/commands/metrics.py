"""``compatkit metrics MATRIX_FILE [--json]``: the compatibility metrics of a saved matrix.

Reads a cross-model matrix (row = query model, column = gallery model, as
produced by ``compatkit eval`` or copied from a paper) and prints AC, AM,
AA_t, BC, FC and the pairs that break BCT's criterion (metric definitions in
:mod:`compatkit.metrics`, after Biondi et al., CVPR 2024, and CL2R). The text
table numbers models from 1, as papers do; the JSON output keeps the library's
zero-based indices.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Compute AC, AM, AA_t, BC, FC and the violating pairs of a compatibility matrix."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "matrix",
        metavar="MATRIX_FILE",
        help=(
            "the matrix: JSON (a list of rows, or an object with a 'matrix' list) or plain "
            "text (one row per line, whitespace/comma separated, or as compatkit prints it: "
            "'1*  89.75'); the lower triangle is enough; percent or fractions; '-' reads "
            "standard input"
        ),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (AC, AM, AA, BC, FC, violations, pairs, matrix) instead",
    )


def _fmt_points(x: float | None, what: str) -> str:
    return "n/a  (one model)" if x is None else f"{x:+.2f} points ({what})"


def render_text(c, rep) -> str:
    """The human-readable report: the matrix, then one line per metric, then the violations."""
    t = c.shape[0]
    width = 7
    models = "1 model" if t == 1 else f"{t} models"
    lines = [f"compatibility matrix, {models} (%; row = query model, column = gallery model)"]
    lines.append("query\\gallery " + "".join(f"{j + 1:>{width}d}" for j in range(t)))
    for i in range(t):
        cells = "".join(f"{c[i, j]:>{width}.2f}" for j in range(i + 1))
        lines.append(f"{i + 1:>13d} {cells}")
    lines.append("")
    if rep.pairs:
        lines.append(
            f"AC   {rep.AC:.2f}   ({rep.compatible_pairs}/{rep.pairs} pairs compatible: "
            "C[i][j] > C[j][j])"
        )
    else:
        lines.append("AC   n/a    (one model: no pairs)")
    lines.append(f"AM   {rep.AM:.2f} % (mean of the lower triangle)")
    lines.append("AA_t " + "  ".join(f"t={k + 1}: {a:.2f}" for k, a in enumerate(rep.AA)))
    bc = _fmt_points(rep.BC, "last model on each earlier gallery vs that model's self-test")
    lines.append(f"BC   {bc}")
    lines.append(f"FC   {_fmt_points(rep.FC, 'each model on the previous gallery vs its own')}")
    lines.append("")
    if not rep.pairs:
        return "\n".join(lines).rstrip()
    if not rep.violations:
        lines.append("violations: none, every newer model beats each older one on its gallery")
    else:
        lines.append(f"violations: {len(rep.violations)} (models numbered from 1)")
        for v in rep.violations:
            i, j = v["row"] + 1, v["col"] + 1
            lines.append(
                f"  query model {i} on gallery of model {j}: C[{i}][{j}] = {v['value']:.2f} "
                f"<= C[{j}][{j}] = {v['self']:.2f} ({v['value'] - v['self']:+.2f})"
            )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..metrics import (
        MatrixFileNotFound,
        compatibility_report,
        decode_text,
        load_matrix,
        parse_matrix,
    )

    if args.matrix == "-":
        c = parse_matrix(decode_text(sys.stdin.buffer.read(), "<stdin>"), "<stdin>")
    else:
        path = Path(args.matrix)
        if not path.is_file():
            raise MatrixFileNotFound(f"{path}: no such file")
        c = load_matrix(path)
    rep = compatibility_report(c)
    if args.json:
        out = rep.to_dict()
        out["T"] = int(c.shape[0])
        out["matrix"] = [
            [float(c[i, j]) if j <= i else None for j in range(len(c))] for i in range(len(c))
        ]
        print(json.dumps(out, allow_nan=False))
    else:
        print(render_text(c, rep))
    return 0
