"""Tests for compatkit.metrics against the paper's released matrix and hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from compatkit.metrics import (
    CompatReport,
    aa_curve,
    average_compatibility,
    average_multimodel_accuracy,
    backward_compatibility,
    compatibility_report,
    forward_compatibility,
    load_matrix,
    violations,
)

# d-Simplex-HOC, 7 tasks, CIFAR100R/10 (docs/reproduce.md): row = query model, column = gallery.
REFERENCE_TEXT = """\
58.89
59.70 61.56
63.05 65.28 69.31
63.34 65.30 70.63 72.37
65.01 67.87 70.75 72.11 73.83
64.08 67.19 71.17 72.71 74.70 76.19
63.14 66.35 72.10 73.50 75.23 76.65 77.16
"""
REFERENCE_ROWS = [[float(x) for x in line.split()] for line in REFERENCE_TEXT.splitlines()]


def _full_json_rows(rows: list[list[float]]) -> list[list[float | None]]:
    """The same matrix written full (T entries a row), with junk above the diagonal."""
    t = len(rows)
    return [r + [999.0] * (t - len(r)) for r in rows]


# A 3 x 3 matrix worked out by hand (zero-based C[i][j]):
#   50
#   60 55
#   40 70 80
# pairs j < i: (1,0) 60 > 50 yes; (2,0) 40 > 50 no; (2,1) 70 > 55 yes  -> AC = 2/3
# AM = (50 + 60 + 55 + 40 + 70 + 80) / 6 = 355/6
# AA_1 = 50; AA_2 = (50 + 60 + 55) / 3 = 55; AA_3 = AM
# BC = mean(C[2][0] - C[0][0], C[2][1] - C[1][1]) = mean(-10, 15) = 2.5
# FC = mean(C[1][0] - C[1][1], C[2][1] - C[2][2]) = mean(5, -10) = -2.5
SMALL = [[50.0], [60.0, 55.0], [40.0, 70.0, 80.0]]


def test_reference_matrix_reproduces_paper_numbers() -> None:
    c = load_matrix(REFERENCE_TEXT)
    assert c.shape == (7, 7)
    assert np.isnan(c[np.triu_indices(7, k=1)]).all()
    rep = compatibility_report(c)
    assert rep.pairs == 21
    assert rep.compatible_pairs == 20
    assert rep.AC == pytest.approx(20 / 21)
    assert f"{rep.AC:.2f}" == "0.95"
    assert f"{rep.AM:.2f}" == "68.90"
    # the paper's "C[5][4] = 72.11 < C[4][4] = 72.37" counts models from 1; zero-based (4, 3).
    assert rep.violations == [{"row": 4, "col": 3, "value": 72.11, "self": 72.37}]
    assert rep.AA[-1] == pytest.approx(rep.AM)
    assert rep.AA[0] == pytest.approx(58.89)


def test_small_matrix_by_hand() -> None:
    c = load_matrix(SMALL)
    assert average_compatibility(c) == pytest.approx(2 / 3)
    assert average_multimodel_accuracy(c) == pytest.approx(355 / 6)
    assert average_multimodel_accuracy(c, t=2) == pytest.approx(55.0)
    assert aa_curve(c) == pytest.approx([50.0, 55.0, 355 / 6])
    assert backward_compatibility(c) == pytest.approx(2.5)
    assert forward_compatibility(c) == pytest.approx(-2.5)
    assert violations(c) == [{"row": 2, "col": 0, "value": 40.0, "self": 50.0}]


def test_criterion_is_strict() -> None:
    # C[1][0] == C[0][0]: equal accuracy is not an improvement, so not compatible.
    c = load_matrix([[50.0], [50.0, 60.0]])
    assert average_compatibility(c) == 0.0
    assert len(violations(c)) == 1


def test_bc_uses_last_row_only() -> None:
    # 4 x 4 with diagonal 10, 20, 30, 40 and last row 13, 21, 36: BC = mean(3, 1, 6) = 10/3.
    # Rows 1-2 off-diagonal differ from the last row, so using them would change the result.
    rows = [[10.0], [99.0, 20.0], [0.0, 0.0, 30.0], [13.0, 21.0, 36.0, 40.0]]
    assert backward_compatibility(load_matrix(rows)) == pytest.approx(10 / 3)
    # FC = mean(99 - 20, 0 - 30, 36 - 40) = mean(79, -30, -4) = 15
    assert forward_compatibility(load_matrix(rows)) == pytest.approx(15.0)


def test_single_model_matrix() -> None:
    rep = compatibility_report(load_matrix("42.5"))
    assert math.isnan(rep.AC)
    assert rep.AM == 42.5
    assert rep.AA == [42.5]
    assert rep.BC is None and rep.FC is None
    d = rep.to_dict()
    assert d["AC"] is None
    json.dumps(d)  # JSON-safe, no NaN


def test_fraction_input_equals_percent_input() -> None:
    frac = [[v / 100 for v in r] for r in REFERENCE_ROWS]
    np.testing.assert_allclose(load_matrix(frac), load_matrix(REFERENCE_ROWS), equal_nan=True)


def test_lower_triangle_text_equals_full_json(tmp_path) -> None:
    full = tmp_path / "full.json"
    full.write_text(json.dumps(_full_json_rows(REFERENCE_ROWS)))
    tri = tmp_path / "tri.txt"
    tri.write_text("# reference matrix\n\n" + REFERENCE_TEXT)
    csv = tmp_path / "tri.csv"
    csv.write_text("\n".join(",".join(f"{v}" for v in r) for r in REFERENCE_ROWS))
    a, b, c = load_matrix(full), load_matrix(tri), load_matrix(str(csv))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # Entries above the diagonal (the 999s) are ignored.
    assert np.isnan(a[0, 1])


def test_json_object_with_matrix_key_and_nulls_round_trips() -> None:
    rep = compatibility_report(load_matrix(SMALL))
    payload = {"matrix": [[50.0, None, None], [60.0, 55.0, None], [40.0, 70.0, 80.0]]}
    again = compatibility_report(load_matrix(json.dumps(payload)))
    assert again.to_dict() == rep.to_dict()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("   \n  \n", "empty"),
        ("50\n60 55\n40 70", "row 3 has 2 entries"),
        ("50 1 2 3\n60 55", "only 2 rows"),
        ("50\n60 abc", "'abc' is not a number"),
        ('[[50], [60, "x"]]', "not a number"),
        ("[[50], [null, 55]]", "missing"),
        ("[1, 2]", "list of rows"),
        ('{"rows": []}', "'matrix'"),
        ("[[50], [60, 55", "invalid JSON"),
        ("50\n-1 55", ">= 0"),
        ("50\n160 55", "<= 100"),
    ],
)
def test_bad_input_raises_clear_value_error(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_matrix(text)


def test_missing_file_is_reported_as_such(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        load_matrix(str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError):
        load_matrix(tmp_path / "nope.txt")


def test_metric_functions_reject_bad_matrices() -> None:
    with pytest.raises(ValueError, match="square"):
        average_compatibility(np.zeros((2, 3)))
    bad = np.full((2, 2), np.nan)
    bad[0, 0] = 1.0
    with pytest.raises(ValueError, match="NaN"):
        compatibility_report(bad)
    with pytest.raises(ValueError, match="t must be"):
        average_multimodel_accuracy(load_matrix(SMALL), t=4)


def test_metrics_ignore_upper_triangle_values() -> None:
    # Whatever a caller leaves above the diagonal must not leak into AM or AC.
    full = np.array([[50.0, 1e6, 1e6], [60.0, 55.0, 1e6], [40.0, 70.0, 80.0]])
    assert average_multimodel_accuracy(full) == pytest.approx(355 / 6)
    assert average_compatibility(full) == pytest.approx(2 / 3)


def test_report_to_dict_keys() -> None:
    d = compatibility_report(load_matrix(SMALL)).to_dict()
    assert set(d) == {"AC", "AM", "AA", "BC", "FC", "violations", "pairs", "compatible_pairs"}
    assert isinstance(compatibility_report(load_matrix(SMALL)), CompatReport)
