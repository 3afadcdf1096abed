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
        "plots/plasticity.png",
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
        # plasticity beside compatibility: every task model's local-class accuracy, its mean
        assert len(r["local_accuracy"]) == 3 and r["local_final"] == r["local_accuracy"][-1]
        assert r["local_mean"] == pytest.approx(sum(r["local_accuracy"]) / 3, abs=1e-3)
        assert r["summary"]["local_mean"]["values"] == [r["local_mean"]]
        assert all(0.0 <= v <= 100.0 for row in r["matrix"] for v in row)
        am = [v for row in r["matrix"] for v in row]
        assert r["AM"] == pytest.approx(sum(am) / len(am), abs=1e-3)
        for v in r["violations"]:
            assert r["matrix"][v["row"]][v["col"]] <= r["matrix"][v["col"]][v["col"]]
    assert m["_meta"]["replacement_tasks"] == [0, 2] and m["_meta"]["num_tasks"] == 3


@pytest.mark.slow
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


@pytest.mark.slow
def test_keep_provider_rows_and_the_gain_over_each_tasks_start(tmp_path, fake_fashion, monkeypatch):
    """Providers that know the local classes; with keep_provider_rows each local class keeps
    the provider's row, and the report's start accuracy is that of the model each task began
    from, recomputed here independently."""
    import torch

    from compatkit.checkpoint import load_checkpoint
    from compatkit.config import load_config
    from compatkit.protocol.evaluate import local_accuracy
    from compatkit.protocol.plan import make_plan
    from compatkit.runtime.device import Precision, Runtime

    out = tmp_path / "keep"
    both = "[0, 1, 2, 3, 4, 5]"
    _cli(
        ["run", str(TINY), "--out", str(out), "--quiet", "--set", "local.keep_provider_rows=true",
         "--set", f"providers.0.data.classes={both}", "--set", f"providers.1.data.classes={both}"],
        fake_fashion,
    )  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    for name in ("hoc", "er"):
        model, _ = load_checkpoint(out / name / "seed_7" / "task_2.pt")
        cm = model.class_map
        assert all(cm.local[c] == cm.provider[c] for c in (0, 1, 2, 3)), (name, cm)
    assert m["er"]["local_start"] == [None, None, None] and m["er"]["local_gain"] is None
    start = m["hoc"]["local_start"]
    assert None not in start
    acc = m["hoc"]["local_accuracy"]
    gain = sum(a - b for a, b in zip(acc, start, strict=True)) / 3
    assert m["hoc"]["local_gain"] == pytest.approx(gain, abs=1e-3)
    # task 2 (zero-based 1) starts from task 1's model, given the row of its new class
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))
    plan = make_plan(load_config(out / "config.yaml"))
    prev, _ = load_checkpoint(out / "hoc" / "seed_7" / "task_0.pt")
    seen = [c for t in range(2) for c in plan.scenario[t].classes]
    prev.add_classes(seen, "local", keep_provider_rows=True)
    mean = torch.tensor(plan.mean).view(1, -1, 1, 1)
    std = torch.tensor(plan.std).view(1, -1, 1, 1)
    rt = Runtime(
        torch.device("cpu"), Precision(None, False), lambda x: (x.float() / 255 - mean) / std
    )
    want = local_accuracy(prev, plan.local_test, seen, rt, 64)
    assert start[1] == pytest.approx(want, abs=1e-3)


def test_summary_line_intervals_stay_within_what_a_metric_can_take() -> None:
    from compatkit.commands.run import summary_line

    runs = [
        {"seed": s, "AC": ac, "AM": am, "local_final": loc}
        for s, ac, am, loc in (
            (42, 0.6, 89.75, 63.5),
            (43, 0.6, 89.73, 56.2),
            (44, 0.1, 86.21, 99.0),
        )
    ]
    line = summary_line({"runs": runs})
    assert "AC 0.43 ± 0.29 [95 %: 0.00, 1.00]" in line
    assert "final local acc. 72.90" in line and ", 100.00]" in line  # cut at 100 %
    assert line.endswith("(mean over 3 seeds)")
    assert summary_line({"runs": runs[:1]}).endswith("(single seed 42)")
