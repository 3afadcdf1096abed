"""The comparison of every method on one run, written to benchmarks/RESULTS.md.

    python -m compatkit run configs/fashion_all.yaml --out runs/all
    python benchmarks/methods_table.py runs/all

Reads the run's ``metrics.json`` (nothing is recomputed) and writes a section with the
comparison table (mean ± sample std over seeds of AC, AM, BC, FC, the final self-test and the
local-class accuracy), each method's first-seed compatibility matrix with its violations, the
command that produced the run and its wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import machine, md_table, render_section, write_section
from compatkit.report import comparison_table, markdown_matrix, table_columns, table_header

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def build(run_dir: Path, run_command: str) -> tuple[str, str]:
    m = json.loads((run_dir / "metrics.json").read_text())
    meta = m["_meta"]
    rows = comparison_table(m)
    cols = table_columns(rows)
    table = md_table([table_header(k) for k in cols], [[r[k] for k in cols] for r in rows])
    reps = meta.get("replacement_tasks", [])
    parts = [
        f"Run: `{run_command}`; {len(meta['seeds'])} seeds {meta['seeds']}, {meta['num_tasks']} "
        f"tasks, replacements at zero-based tasks {reps}; wall time "
        f"{meta.get('wall_time_s', 0) / 60:.1f} min on this machine (training of every "
        "provider included).",
        "",
        table,
        "",
        "AC: fraction of pairs j < i with C[i][j] > C[j][j]; AM: mean of the lower triangle (%); "
        "BC, FC in percentage points; local-class accuracy: the classification accuracy over the "
        "test images of the local classes seen so far, of the final model and averaged over the "
        "task models (chance for the final model: 100 / local classes). Mean ± sample std over "
        "seeds.",
    ]
    for name in meta["methods"]:
        e = m[name]
        parts += [
            "",
            f"### {name} (seed {e['seed']})",
            "",
            markdown_matrix(e["matrix"], e["violations"], reps),
        ]
    return "\n".join(parts), meta.get("device", "cpu")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--run-command", default="python -m compatkit run configs/fashion_all.yaml")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    body, device = build(args.run_dir, args.run_command)
    section = render_section(
        "methods_table",
        "All methods on the default protocol (configs/fashion_all.yaml)",
        "python benchmarks/methods_table.py RUN_DIR",
        machine(device),
        body,
    )
    write_section(args.results, "methods_table", section)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
