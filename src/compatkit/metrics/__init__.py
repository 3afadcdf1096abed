"""Compatibility metrics over a cross-model matrix: AC, AM, AA_t, BC, FC.

Definitions (``scores``) follow docs/method.md §5, i.e. the evaluation of Biondi et al.,
"Stationary Representations: Optimally Approximating Compatibility and Implications for
Improved Model Replacements", CVPR 2024 (AC and AM, after the
empirical criterion of BCT, Shen et al., CVPR 2020), plus BC and FC from CL2R
(Biondi et al., "CL2R: Compatible Lifelong Learning Representations", 2022).

Index conventions (used everywhere in this module and in every JSON it feeds):

- ``C`` is a ``(T, T)`` float64 array, **zero-based**: ``C[i][j]`` is the metric
  (in percent) of *query* features by model ``i`` against *gallery* features by
  model ``j``, defined for ``j <= i``; entries above the diagonal are NaN.
  The docs number models from 1 for people: their "C[5][4]" is ``C[4][3]`` here.
- A pair ``(i, j)`` with ``j < i`` is *compatible* when ``C[i][j] > C[j][j]``
  (strictly): querying the old gallery with the newer model beats the old
  model's own self-test (BCT's empirical criterion).

Reading a matrix from a file, text or lists: ``matrix``.
"""

from .matrix import (
    MatrixFileNotFound,
    as_matrix,
    decode_text,
    load_matrix,
    parse_matrix,
    read_matrix_text,
)
from .scores import (
    CompatReport,
    aa_curve,
    average_compatibility,
    average_multimodel_accuracy,
    backward_compatibility,
    compatibility_report,
    forward_compatibility,
    violations,
)

__all__ = [
    "CompatReport",
    "MatrixFileNotFound",
    "aa_curve",
    "as_matrix",
    "average_compatibility",
    "average_multimodel_accuracy",
    "backward_compatibility",
    "compatibility_report",
    "decode_text",
    "forward_compatibility",
    "load_matrix",
    "parse_matrix",
    "read_matrix_text",
    "violations",
]
