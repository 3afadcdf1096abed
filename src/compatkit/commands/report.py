"""``compatkit report RUN_DIR``: redraw a run's plots and report.md from its metrics.json.

The report depends on metrics.json alone (no checkpoints, no data), so it can be
regenerated after the report code changes, on another machine, or for an old run.
"""

from __future__ import annotations

import argparse

HELP = "regenerate a run's plots and report.md from its metrics.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding metrics.json")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from ..report import comparison_table, load_metrics, table_columns, table_header, write_report

    path = write_report(Path(args.run_dir))
    # write_report validated the file already; reading it again keeps this module thin.
    rows = comparison_table(load_metrics(args.run_dir))
    console = Console()
    if not console.is_terminal:
        # Piped or logged: no width to respect, and wrapped "mean ±\n std" cells read badly.
        console = Console(width=160)
    table = Table(title="Comparison (mean ± std over seeds)", title_justify="left")
    columns = table_columns(rows)
    for key in columns:
        table.add_column(
            table_header(key), justify="left" if key == "method" else "right", no_wrap=True
        )
    for row in rows:
        table.add_row(*(str(row[k]) for k in columns))
    # Rendered to a string, then printed: rich answers a closed pipe with its own exit status 1
    # (an internal error by the CLI's rule); print lets the CLI's rule see it (status 141).
    with console.capture() as captured:
        console.print(table)
    print(captured.get(), end="")
    # Plain print of the path: a terminal may wrap or style rich output, scripts read this line.
    print(f"report: {path}")
    return 0
