"""``compatkit metrics`` (and ``report``) on hostile and unusual inputs; AA_t in O(T^2).

Issue 10, item 10, and item 16 (the library's ``compatibility_report`` reads what the command
reads, with the same normalisation).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from compatkit.metrics import (
    aa_curve,
    average_compatibility,
    average_multimodel_accuracy,
    backward_compatibility,
    compatibility_report,
    forward_compatibility,
    load_matrix,
    violations,
)

from .test_metrics_cli import REFERENCE_ROWS, REFERENCE_TEXT, _check_reference, _cli
from .test_report_cli import metrics as report_metrics

README_MATRIX = """\
 1*  89.75
 2   88.00  90.15
 3*  90.40  91.85  91.15
 4   90.30  91.20  89.30  92.00
 5*  88.75  91.50  92.05  93.70  93.20
"""
README_ROWS = [[float(x) for x in ln.split()[1:]] for ln in README_MATRIX.splitlines()]


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# ----------------------------------------------------------------------------- formats


def test_deeply_nested_json_is_one_line(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    assert "invalid JSON: nested too deeply" in _one_line(_cli(str(p)))


def test_readme_matrix_format_is_read(tmp_path):
    p = tmp_path / "readme.txt"
    p.write_text(README_MATRIX)
    r = _cli(str(p), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["matrix"][4] == README_ROWS[4] and out["T"] == 5
    expected = compatibility_report(README_ROWS).to_dict()
    assert {k: out[k] for k in expected} == expected
    # The same with the header lines the text output prints, and without the stars.
    p.write_text(
        "compatibility matrix, 5 models (%; row = query model, column = gallery model)\n"
        "query\\gallery       1      2      3      4      5\n" + README_MATRIX.replace("*", " ")
    )
    again = _cli(str(p), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == out


def test_labels_are_only_taken_as_labels_when_they_number_the_rows():
    # A plain matrix whose first column happens to count 1, 2 stays a plain matrix ...
    assert load_matrix("1\n2 3\n")[1, 0] == 2.0
    # ... and labels out of order are not labels, so the row is too long: refused.
    with pytest.raises(ValueError, match="row 2 has 3 entries but the matrix has only 2 rows"):
        load_matrix("2 50\n1 60 55\n")


@pytest.mark.parametrize("bom", ["\ufeff"])
def test_utf8_bom_file_and_stdin(tmp_path, bom):
    p = tmp_path / "bom.txt"
    p.write_bytes((bom + REFERENCE_TEXT).encode())
    r = _cli(str(p), "--json")
    assert r.returncode == 0, r.stderr
    _check_reference(json.loads(r.stdout))
    r = _cli("-", "--json", stdin=bom + json.dumps(REFERENCE_ROWS))
    assert r.returncode == 0, r.stderr
    _check_reference(json.loads(r.stdout))


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"50\n60 \xff\n", "not UTF-8 text (byte 0xff at offset 6)"),
        (b"[[50], [1" + b"0" * 400 + b", 55]]", "row 2, column 1 is too large a number"),
        (b"50\n1e999 55\n", "the lower triangle must be finite numbers"),
        (b"# only a comment\n", "no matrix rows"),
        (b"query\\gallery 1 2\n", "no matrix rows"),
    ],
)
def test_hostile_matrix_files_one_line(tmp_path, blob, needle):
    p = tmp_path / "m.txt"
    p.write_bytes(blob)
    assert needle in _one_line(_cli(str(p)))


# ----------------------------------------------------------------------------- pipes


def test_metrics_into_head_has_no_traceback(tmp_path):
    """`compatkit metrics big.txt | head -1`: the reader leaves after one line of ~3 MB."""
    rng = np.random.default_rng(0)
    t = 300
    m = rng.uniform(50, 90, (t, t))
    p = tmp_path / "big.txt"
    p.write_text("\n".join(" ".join(f"{v:.2f}" for v in m[i, : i + 1]) for i in range(t)))
    writer = subprocess.Popen(
        [sys.executable, "-m", "compatkit", "metrics", str(p)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = subprocess.run(["head", "-1"], stdin=writer.stdout, capture_output=True, timeout=120)
    writer.stdout.close()
    err = writer.stderr.read().decode()
    rc = writer.wait(timeout=120)
    assert head.stdout.decode().startswith("compatibility matrix, 300 models")
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception" not in err
    assert rc in (0, 141)


@pytest.mark.parametrize("command", ["metrics", "report"])
def test_reader_gone_before_the_first_write(tmp_path, command):
    """The pipe is closed before the command writes anything: no traceback, SIGPIPE's status."""
    if command == "metrics":
        arg = tmp_path / "m.txt"
        arg.write_text(REFERENCE_TEXT)
    else:
        arg = tmp_path / "run"
        arg.mkdir()
        (arg / "metrics.json").write_text(json.dumps(report_metrics()))
    writer = subprocess.Popen(
        [sys.executable, "-m", "compatkit", command, str(arg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    writer.stdout.close()  # no reader at all: the first write fails with EPIPE
    err = writer.stderr.read().decode()
    rc = writer.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception" not in err
    assert rc == 141, err


# ----------------------------------------------------------------------------- AA_t


def _aa_slow(c: np.ndarray) -> list[float]:
    """The definition: AA_t is the mean of the lower triangle of the top-left t x t block."""
    out = []
    for t in range(1, len(c) + 1):
        vals = [c[i][j] for i in range(t) for j in range(i + 1)]
        out.append(sum(vals) / len(vals))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_aa_curve_equals_the_definition(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, 60))
    c = rng.uniform(1.5, 100, (t, t))
    c[np.triu_indices(t, 1)] = rng.uniform(-1e6, 1e6)  # junk above the diagonal is ignored
    assert aa_curve(c) == pytest.approx(_aa_slow(c), rel=1e-12, abs=0)
    assert aa_curve(c)[-1] == pytest.approx(average_multimodel_accuracy(c), rel=1e-12)


# ----------------------------------------------------------------------------- item 16


def test_library_reads_what_the_command_reads(tmp_path):
    """Lower-triangle lists and fractions: compatibility_report == `compatkit metrics --json`."""
    fractions = [[v / 100 for v in row] for row in REFERENCE_ROWS]
    p = tmp_path / "frac.json"
    p.write_text(json.dumps(fractions))
    r = _cli(str(p), "--json")
    assert r.returncode == 0, r.stderr
    cli = json.loads(r.stdout)
    for given in (REFERENCE_ROWS, fractions, np.array(load_matrix(REFERENCE_ROWS))):
        lib = compatibility_report(given).to_dict()
        for k, v in lib.items():
            if k == "violations":  # a list of flat dicts
                assert len(v) == len(cli[k])
                assert all(a == pytest.approx(b) for a, b in zip(v, cli[k], strict=True))
            else:
                assert v == pytest.approx(cli[k], rel=1e-12), k
    # Every metric function takes the same inputs.
    assert average_compatibility(fractions) == pytest.approx(20 / 21)
    assert backward_compatibility(fractions) == pytest.approx(14.82 / 6)
    assert forward_compatibility(REFERENCE_ROWS) == pytest.approx(-11.35 / 6)
    assert violations(fractions) == [{"row": 4, "col": 3, "value": 72.11, "self": 72.37}]
    assert aa_curve(fractions) == pytest.approx(cli["AA"])


def test_library_refuses_what_the_command_refuses():
    from compatkit.errors import InputError

    for bad in ([[50.0], [60.0]], [[150.0]], [[-1.0]], [[float("nan")]], []):
        with pytest.raises(InputError):
            compatibility_report(bad)
