"""The compatibility/plasticity front of a sweep, written to benchmarks/RESULTS.md.

    compatkit sweep configs/fashion.yaml --vary ... --out runs/front
    python benchmarks/front_table.py runs/front --command "compatkit sweep ..." [--command ...]

Reads the sweep's ``summary.json`` (written by ``compatkit sweep``; nothing is recomputed) and
writes one section: the commands that produced the sweep (given with ``--command``, as a
user types them: the sweep records its own, with the paths of the machine it ran on), one row
per setting with mean ± sample std over its seeds, and the settings on the Pareto front of
compatibility (AM, AC) against plasticity (final local-class accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine, md_table, render_section, write_section
from compatkit.report.table import METRIC_LABELS, fmt_stat

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
COLUMNS = ("AC", "AM", "local_final", "local_mean", "local_gain", "final_self")


def _key(key: str) -> str:
    return key.removeprefix("method_options.")


def _label(row: dict) -> str:
    vals = [f"{_key(k)}={v}" for k, v in row["values"].items() if v is not None]
    return f"{row['method']} " + ", ".join(vals) if vals else row["method"]


def build(sweep_dir: Path, commands: list[str]) -> str:
    summary = json.loads((sweep_dir / "summary.json").read_text())
    rows, keys = summary["rows"], summary["varied"]
    keys = [k for k in keys if any(r["values"].get(k) is not None for r in rows)]
    table = md_table(
        ["method", *(_key(k) for k in keys), "seeds", *(METRIC_LABELS[c] for c in COLUMNS),
         "front"],
        [
            [r["method"], *("—" if r["values"].get(k) is None else r["values"][k] for k in keys),
             len(r["seeds"]), *(fmt_stat(r["stats"].get(c)) for c in COLUMNS),
             ", ".join(c for c in ("AM", "AC") if r["front"][c])]
            for r in rows
        ],
    )  # fmt: skip
    seeds = sorted({s for r in rows for s in r["seeds"]})
    parts = ["Commands (run from the repository root; each adds its settings to one sweep):", ""]
    parts += ["```bash", *commands, "```", ""]
    parts.append(
        f"{len(rows)} settings, seeds {seeds} (the `seeds` column says how many each has), "
        "mean ± sample std over seeds. AC: fraction of model pairs j < i with "
        "C[i][j] > C[j][j]; AM: mean of the compatibility matrix (%); final / mean local acc.: "
        "local-class accuracy of the last task model / mean over the task models (%, chance "
        "16.7 / 29.0); gain over start: mean over tasks of a task model's local accuracy minus "
        "that of the model the task started from (d-Simplex heads only, percentage points). "
        "front: Pareto-optimal for (final local acc., AM) and/or (final local acc., AC) among "
        "these settings, on the means."
    )
    parts += ["", table, ""]
    for comp in ("AM", "AC"):
        front = sorted(
            (r for r in rows if r["front"][comp]),
            key=lambda r: r["stats"]["local_final"]["mean"],
        )
        parts.append(
            f"On the front for (final local acc., {comp}), from the most compatible to the most "
            "plastic: " + "; ".join(
                f"{_label(r)} ({fmt_stat(r['stats'][comp])}, "
                f"{fmt_stat(r['stats']['local_final'])} %)"
                for r in reversed(front)
            ) + "."
        )  # fmt: skip
        parts.append("")
    if summary["pending"]:
        parts.append(f"Pending (not in the table): {[p['setting'] for p in summary['pending']]}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--command", action="append", default=[], help="a command of the sweep")
    p.add_argument("--title", default="Compatibility against plasticity (configs/fashion.yaml)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    body = build(args.sweep_dir, args.command)
    section = render_section(
        "front", args.title, "python benchmarks/front_table.py SWEEP_DIR", machine("cpu"), body
    )
    write_section(args.results, "front", section)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
