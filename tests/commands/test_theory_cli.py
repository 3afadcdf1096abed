"""End-to-end tests of ``compatkit theory``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compatkit import cli


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "compatkit", "theory", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_json_and_out_end_to_end(tmp_path) -> None:
    out = tmp_path / "th"
    p = _cli(
        *("--K", "5", "--r-new", "0.2", "0.6", "--shift", "0", "40", "--pairs", "4000"),
        *("--region", "cap", "--out", str(out), "--json"),
    )
    assert p.returncode == 0, p.stderr
    payload = json.loads(p.stdout)  # one JSON object, nothing else on stdout
    assert set(payload) >= {"settings", "results", "files", "closed_form"}
    assert payload["settings"]["d"] == 4 and payload["settings"]["region"] == "cap"
    res = payload["results"]
    assert [(r["shift"], r["r_new"]) for r in res] == [(0, 0.2), (0, 0.6), (40, 0.2), (40, 0.6)]
    keys = {
        "same_frac",
        "diff_frac",
        "same_expect_new",
        "same_expect_old",
        "diff_expect_new",
        "diff_expect_old",
        "same_holds_in_expectation",
        "diff_holds_in_expectation",
        "same_gap_ci",
        "n_pairs",
        "verdict",
        "notes",
    }
    assert all(keys <= set(r) for r in res)
    stationary_tight, stationary_loose, moved_tight, _ = res
    assert stationary_tight["same_holds_in_expectation"]
    assert stationary_tight["diff_holds_in_expectation"]
    assert stationary_tight["verdict"].startswith("holds in expectation")
    assert "Corollary 1" in stationary_tight["verdict"]
    assert any("r_new > r_old" in n for n in stationary_loose["notes"])
    assert not moved_tight["same_holds_in_expectation"]
    for name in ("theory.json", "theory.png", "theory_2d.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "theory.json").read_text())["results"] == res


def test_table_and_verdicts(capsys) -> None:
    rc = cli.main(["theory", "--K", "4", "--pairs", "3000", "--shift", "0", "60"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "shift=0°: holds in expectation; per-pair" in text
    assert "< 1 (Corollary 1)" in text
    assert "shift=60°: fails in expectation (same-class" in text


@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["--K", "1"], "K must be"),
        (["--K", "10", "--dim", "4"], "d must be >= K-1"),
        (["--r-new", "-0.2"], "radii must be >= 0"),
        (["--r-old", "-1"], "radii must be >= 0"),
        (["--pairs", "1"], "--pairs"),
    ],
)
def test_bad_values_exit_2_with_a_clear_message(argv, msg, capsys) -> None:
    assert cli.main(["theory", *argv]) == 2
    assert msg in capsys.readouterr().err


def test_looser_new_model_is_flagged_not_refused(capsys) -> None:
    assert (
        cli.main(["theory", "--K", "3", "--r-old", "0.2", "--r-new", "0.4", "--pairs", "500"]) == 0
    )
    assert "note: r_new > r_old" in capsys.readouterr().out
