"""`compatkit run` and `compatkit eval` end to end, as a user runs them (subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .cli import TINY
from .cli import run_cli as _cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fake_fashion) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    _cli(["run", str(TINY), "--out", str(out), "--quiet"], fake_fashion)
    return out


def _tri_ok(m, t):
    return len(m) == t and all(len(row) == i + 1 for i, row in enumerate(m))


def test_run_writes_every_output(run_dir, _private_cache):
    for f in (
        "config.yaml",
        "environment.json",
        "log.txt",
        "metrics.json",
        "report.md",
        "plots/aa.png",
        "plots/matrix_hoc.png",
        "plots/matrix_er.png",
    ):
        assert (run_dir / f).is_file(), f
    for m in ("hoc", "er"):
        for t in range(3):
            assert (run_dir / m / "seed_7" / f"task_{t}.pt").is_file()
    providers = sorted(p.name for p in (_private_cache / "providers").glob("*.pt"))
    assert len(providers) == 4  # 2 providers x (simplex, learnable), in the shared cache
    assert not (run_dir.parent / "providers").exists()
    log = (run_dir / "log.txt").read_text()
    assert "task 2" in log and "replacement" in log


def test_metrics_schema(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert set(m) == {"hoc", "er", "_meta"}
    for name in ("hoc", "er"):
        r = m[name]
        for k in ("matrix", "AC", "AM", "AA", "BC", "FC", "violations", "seed", "runs", "summary"):
            assert k in r, (name, k)
        assert r["seed"] == 7
        assert _tri_ok(r["matrix"], 3) and _tri_ok(r["recall1_matrix"], 3)
        assert len(r["AA"]) == 3 and 0.0 <= r["AC"] <= 1.0
        assert all(0.0 <= v <= 100.0 for row in r["matrix"] for v in row)
        am = [v for row in r["matrix"] for v in row]
        assert r["AM"] == pytest.approx(sum(am) / len(am), abs=1e-3)
        for v in r["violations"]:
            assert r["matrix"][v["row"]][v["col"]] <= r["matrix"][v["col"]][v["col"]]
    assert m["_meta"]["replacement_tasks"] == [0, 2] and m["_meta"]["num_tasks"] == 3


def test_eval_reproduces_metrics_from_checkpoints(run_dir, fake_fashion):
    before = json.loads((run_dir / "metrics.json").read_text())
    for f in run_dir.glob("*/seed_*/features/*.pt"):
        f.unlink()
    (run_dir / "metrics.json").unlink()
    _cli(["eval", str(run_dir), "--quiet"], fake_fashion)
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["_meta"]["feature_extractions"] == 6
    for name in ("hoc", "er"):
        for k in ("matrix", "AC", "AM", "AA", "BC", "FC", "violations", "map_matrix"):
            assert after[name][k] == before[name][k], (name, k)
    # a second eval finds every feature in the cache
    _cli(["eval", str(run_dir), "--quiet"], fake_fashion)
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["_meta"]["feature_extractions"] == 0
    assert again["hoc"]["matrix"] == before["hoc"]["matrix"]


def test_refusals_happen_before_training(tmp_path, fake_fashion):
    out = tmp_path / "bad"
    r = _cli(
        ["run", str(TINY), "--out", str(out), "--set", "replacement_tasks=[5]"],
        fake_fashion,
        check=False,
    )
    assert r.returncode == 2 and "past the last task" in r.stderr
    assert not list(out.glob("**/*.pt"))
    r = _cli(
        ["run", str(TINY), "--out", str(out), "--set", "train.lr=fast"], fake_fashion, check=False
    )
    assert r.returncode == 2 and "train.lr" in r.stderr


def test_run_refuses_to_overwrite_without_resume(run_dir, fake_fashion):
    r = _cli(["run", str(TINY), "--out", str(run_dir)], fake_fashion, check=False)
    assert r.returncode == 2 and "--resume" in r.stderr
