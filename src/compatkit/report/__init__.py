"""The run report: comparison table, compatibility matrices, AA_t and plasticity, report.md.

Everything here reads the ``metrics.json`` a run leaves behind and nothing else, so a report
can be regenerated (``compatkit report RUN_DIR``) long after the models are gone. The figures
follow the paper (Biondi et al., CVPR 2024): Figure 5 is the lower-triangular compatibility
matrix, coloured by C[i][j] - C[j][j] on a scale centred at zero, with the pairs that break
the empirical criterion hatched; Figure 4 is AA_t against t with the replacements marked and
the chance level. Beside compatibility the report shows
plasticity, the local-class accuracy of every task model, because a model that does not move
is trivially compatible.

Modules, by concern:

- :mod:`~compatkit.report.metrics_file`: reading and validating ``metrics.json``, matrices
  and their violations;
- :mod:`~compatkit.report.table`: statistics over seeds, the comparison table;
- :mod:`~compatkit.report.seeds`: 95 % intervals over seeds, paired differences per seed;
- :mod:`~compatkit.report.style`, :mod:`~compatkit.report.matrix_plots` and
  :mod:`~compatkit.report.plots`: the figures;
- :mod:`~compatkit.report.markdown`: ``report.md`` and :func:`write_report`.

Index conventions: matrices are stored zero-based (``C[i][j]``, query model i, gallery model
j, ``j <= i``); everything shown to a reader (tick labels, tables, violation lists) is
one-based, ``model t`` being the model after task t, as in the paper's text, with ``*`` on
replacement models.
"""

from __future__ import annotations

from .markdown import markdown_matrix, render_markdown, safe_name, write_report
from .metrics_file import (
    METRIC_KEYS,
    PLASTICITY_KEYS,
    RunFileNotFound,
    aa_curve,
    load_metrics,
    lower_triangle,
    matrix_violations,
    method_names,
    method_runs,
    replacement_tasks,
    resolve_violations,
    validate_metrics,
)
from .plots import (
    gap_limit,
    matrix_figure,
    matrix_gaps,
    plot_aa,
    plot_matrices_grid,
    plot_matrix,
    plot_plasticity,
)
from .seeds import interval, paired_differences, seeds_section, t_quantile_975
from .table import (
    METRIC_LABELS,
    TABLE_COLUMNS,
    chance_levels,
    comparison_table,
    gallery_chance,
    md_table,
    method_aa,
    method_local,
    table_columns,
    table_header,
)

__all__ = [
    "METRIC_KEYS",
    "METRIC_LABELS",
    "PLASTICITY_KEYS",
    "TABLE_COLUMNS",
    "RunFileNotFound",
    "aa_curve",
    "chance_levels",
    "comparison_table",
    "gallery_chance",
    "gap_limit",
    "interval",
    "load_metrics",
    "lower_triangle",
    "markdown_matrix",
    "matrix_figure",
    "matrix_gaps",
    "matrix_violations",
    "md_table",
    "method_aa",
    "method_local",
    "method_names",
    "method_runs",
    "paired_differences",
    "plot_aa",
    "plot_matrices_grid",
    "plot_matrix",
    "plot_plasticity",
    "render_markdown",
    "replacement_tasks",
    "resolve_violations",
    "safe_name",
    "seeds_section",
    "t_quantile_975",
    "table_columns",
    "table_header",
    "validate_metrics",
    "write_report",
]
