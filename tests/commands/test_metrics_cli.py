"""End-to-end tests of ``compatkit metrics``: the real command line in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# d-Simplex-HOC, 7 tasks, CIFAR100R/10 (docs/reproduce.md).
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


def _cli(*args: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "compatkit", "metrics", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def matrix_files(tmp_path):
    as_json = tmp_path / "reference.json"
    as_json.write_text(json.dumps(REFERENCE_ROWS))
    as_text = tmp_path / "reference.txt"
    as_text.write_text(REFERENCE_TEXT)
    return as_json, as_text


def _check_reference(out: dict) -> None:
    assert {"AC", "AM", "AA", "BC", "FC", "violations", "pairs", "compatible_pairs"} <= set(out)
    assert f"{out['AC']:.2f}" == "0.95"
    assert (out["compatible_pairs"], out["pairs"]) == (20, 21)
    assert f"{out['AM']:.2f}" == "68.90"
    assert len(out["AA"]) == 7 and f"{out['AA'][-1]:.2f}" == "68.90"
    # Hand-computed from the table: BC = (4.25 + 4.79 + 2.79 + 1.13 + 1.40 + 0.46) / 6 = 2.47;
    # FC = (-1.86 - 4.03 - 1.74 - 1.72 - 1.49 - 0.51) / 6 = -1.8917.
    assert out["BC"] == pytest.approx(14.82 / 6)
    assert out["FC"] == pytest.approx(-11.35 / 6)
    # the paper's 1-based C[5][4] < C[4][4] is row 4, column 3 zero-based.
    assert out["violations"] == [{"row": 4, "col": 3, "value": 72.11, "self": 72.37}]


@pytest.mark.parametrize("which", [0, 1], ids=["json-file", "text-lower-triangle"])
def test_json_output_on_reference_matrix(matrix_files, which: int) -> None:
    r = _cli(str(matrix_files[which]), "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1  # exactly one JSON object on one line
    _check_reference(json.loads(r.stdout))


def test_text_output_on_reference_matrix(matrix_files) -> None:
    r = _cli(str(matrix_files[1]))
    assert r.returncode == 0, r.stderr
    assert "AC   0.95" in r.stdout
    assert "20/21 pairs" in r.stdout
    assert "AM   68.90" in r.stdout
    assert "t=7: 68.90" in r.stdout
    assert "C[5][4] = 72.11 <= C[4][4] = 72.37" in r.stdout  # 1-based in the table


def test_stdin_and_json_round_trip(tmp_path) -> None:
    first = _cli("-", "--json", stdin=REFERENCE_TEXT)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    _check_reference(out)
    # The JSON the command writes (with its 'matrix' key, nulls above the diagonal) reads back.
    again_file = tmp_path / "again.json"
    again_file.write_text(first.stdout)
    again = _cli(str(again_file), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == out


def test_fraction_input_same_metrics(tmp_path) -> None:
    p = tmp_path / "frac.csv"
    p.write_text("\n".join(",".join(f"{v / 100:.4f}" for v in r) for r in REFERENCE_ROWS))
    r = _cli(str(p), "--json")
    assert r.returncode == 0, r.stderr
    _check_reference(json.loads(r.stdout))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("50\n60 abc\n", "'abc' is not a number"),
        ("50\n60 55\n40 70\n", "row 3 has 2 entries"),
        ("", "empty input"),
    ],
)
def test_bad_file_exits_2_with_message(tmp_path, content: str, message: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(content)
    r = _cli(str(p), "--json")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "compatkit metrics: error:" in r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_file_exits_2(tmp_path) -> None:
    r = _cli(str(tmp_path / "absent.json"))
    assert r.returncode == 2
    assert "absent.json: no such file" in r.stderr
