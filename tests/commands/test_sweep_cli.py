"""`compatkit sweep`: the grid, the summary against hand computation, and, through the real
command line on the tiny dataset, a sweep killed with SIGKILL and continued."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import yaml

from compatkit.errors import ConfigError, InputError
from compatkit.sweep import SweepDir, expand, pareto, parse_vary, split_top_level, write_summary

from .cli import TINY, start_cli, wait_for
from .cli import run_cli as _cli

# --------------------------------------------------------------------------- the grid


def test_split_on_top_level_commas_only():
    assert split_top_level("[42,43,44]") == ["[42,43,44]"]
    assert split_top_level("[42],[43], [44]") == ["[42]", "[43]", "[44]"]
    assert split_top_level("1e-3,3e-3") == ["1e-3", "3e-3"]
    assert split_top_level("{a: 1, b: 2},'x,y'") == ["{a: 1, b: 2}", "'x,y'"]
    with pytest.raises(ConfigError, match="unbalanced"):
        split_top_level("[1,2")
    with pytest.raises(ConfigError, match="unbalanced"):
        split_top_level("1],[2")


def test_parse_vary_refusals():
    (v,) = parse_vary(["seeds=[42,43,44]"])
    assert v.key == "seeds" and v.values == ("[42,43,44]",)
    for bad, msg in (
        (["train.lr"], "KEY=V1"),
        (["=1,2"], "no key"),
        (["train.lr=1e-3,,3e-3"], "empty value"),
        (["train.lr=1e-3,1e-3"], "twice"),
        (["train.lr=1", "train.lr=2"], "given twice"),
        (["x=[1,{]"], "unbalanced"),
    ):
        with pytest.raises(ConfigError, match=msg):
            parse_vary(bad)


def test_expand_one_setting_per_method_and_seed_union():
    vary = parse_vary(["method_options.hoc.lam=0.1,0.5", "seeds=[1],[2,3]", "train.epochs=1,2"])
    settings = expand(TINY, [], vary)
    by = {(s.method, s.values.get("method_options.hoc.lam"), s.values["train.epochs"]): s
          for s in settings}  # fmt: skip
    # hoc: 2 lambdas x 2 epochs; er ignores hoc's lambda: 2 epochs only, not 4
    assert sorted(by) == sorted(
        [("hoc", lam, ep) for lam in ("0.1", "0.5") for ep in ("1", "2")]
        + [("er", None, ep) for ep in ("1", "2")]
    )
    for s in settings:
        assert s.seeds == [1, 2, 3]  # one setting over every seed value
        assert s.config["methods"] == [s.method]
        assert set(s.config["method_options"]) <= {s.method}
        assert "seeds" not in s.values
    assert by[("hoc", "0.5", "2")].config["method_options"]["hoc"]["lam"] == 0.5
    assert by[("er", None, "2")].config["train"]["epochs"] == 2
    # a value the config refuses names the grid point
    with pytest.raises(ConfigError, match=r"sweep point train.lr=-1: train.lr"):
        expand(TINY, [], parse_vary(["train.lr=0.1,-1"]))


def test_pareto_against_hand_points():
    pts = [(20.0, 90.0), (50.0, 80.0), (40.0, 70.0), (50.0, 80.0), (60.0, 40.0), (10.0, 90.0)]
    # (40, 70) is beaten by (50, 80); (10, 90) by (20, 90); the duplicates of (50, 80) both stay
    assert pareto(pts) == [True, True, False, True, True, False]
    assert pareto([]) == []


# --------------------------------------------------------------------------- the summary


def _run(seed: int, matrix: list, local: list) -> dict:
    from compatkit.metrics import compatibility_report
    from compatkit.report import lower_triangle

    rep = compatibility_report(lower_triangle(matrix)).to_dict()
    return {
        "seed": seed,
        "matrix": matrix,
        "final_self": matrix[-1][-1],
        "local_accuracy": local,
        "local_final": local[-1],
        "local_mean": sum(local) / len(local),
        **rep,
    }


def _write_setting(sweep: Path, name: str, method: str, lam, runs: list[dict]) -> None:
    d = sweep / "runs" / name
    d.mkdir(parents=True)
    cfg = {"methods": [method], "method_options": {method: {"lam": lam}} if lam else {}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    meta = {
        "seeds": [r["seed"] for r in runs],
        "num_tasks": 2,
        "tasks": [[1, 3], [4]],
        "replacement_tasks": [0],
        "methods": [method],
        "seconds_per_seed": [10.0] * len(runs),
    }
    (d / "metrics.json").write_text(json.dumps({method: {**runs[0], "runs": runs}, "_meta": meta}))


def test_summary_mean_std_over_seeds_and_front(tmp_path):
    sweep = tmp_path / "s"
    # hoc lam 0.1 over 3 seeds: AM 60, 62, 64 (each matrix's mean), final local 20, 26, 32
    points = ((1, 60.0, 20.0), (2, 66.0, 26.0), (3, 72.0, 32.0))
    hoc_a = [_run(s, [[60.0], [m, 60.0]], [50.0, f]) for s, m, f in points]
    hoc_b = [_run(1, [[50.0], [40.0, 50.0]], [60.0, 70.0])]  # more plastic, less compatible
    er = [_run(1, [[40.0], [10.0, 40.0]], [60.0, 50.0])]  # dominated by hoc_b on both
    _write_setting(sweep, "hoc-a", "hoc", 0.1, hoc_a)
    _write_setting(sweep, "hoc-b", "hoc", 0.9, hoc_b)
    _write_setting(sweep, "er-c", "er", None, er)
    index = {
        "format": 1,
        "invocations": [{"command": "compatkit sweep x --vary method_options.hoc.lam=0.1,0.9"}],
        "settings": {
            "a": {"method": "hoc", "name": "hoc-a", "values": {"method_options.hoc.lam": "0.1"},
                  "seeds": [1, 2, 3]},
            "b": {"method": "hoc", "name": "hoc-b", "values": {"method_options.hoc.lam": "0.9"},
                  "seeds": [1]},
            "c": {"method": "er", "name": "er-c", "values": {}, "seeds": [1]},
            "d": {"method": "er", "name": "er-d", "values": {}, "seeds": [1]},
        },
    }  # fmt: skip
    payload = write_summary(sweep, index)
    rows = {r["setting"]: r for r in payload["rows"]}
    a = rows["hoc-a"]["stats"]
    assert a["AM"]["values"] == pytest.approx([60.0, 62.0, 64.0])
    assert a["AM"]["mean"] == pytest.approx(62.0) and a["AM"]["std"] == pytest.approx(2.0)
    assert a["local_final"]["mean"] == pytest.approx(26.0)
    assert a["local_final"]["std"] == pytest.approx(6.0)
    assert a["local_mean"]["values"] == pytest.approx([35.0, 38.0, 41.0])
    assert a["AC"]["values"] == [0.0, 1.0, 1.0] and a["AC"]["mean"] == pytest.approx(2 / 3)
    assert rows["hoc-a"]["values"] == {"method_options.hoc.lam": "0.1"}
    assert rows["er-c"]["values"] == {"method_options.hoc.lam": None}  # not er's option
    # front: hoc-a (62, 26) and hoc-b (46.67, 70) are optimal; er-c (30, 50) is dominated
    assert {k: r["front"]["AM"] for k, r in rows.items()} == {
        "hoc-a": True, "hoc-b": True, "er-c": False}  # fmt: skip
    assert payload["pending"] == [{"method": "er", "setting": "er-d", "hash": "d", "seeds": [1]}]
    md = (sweep / "summary.md").read_text()
    assert "compatkit sweep x --vary method_options.hoc.lam=0.1,0.9" in md
    assert "| hoc | 0.1 | 3 | 0.67 ± 0.58 | 62.00 ± 2.00 | 26.00 ± 6.00 |" in md
    assert "| er | — | 1 |" in md and "1 pending" in md
    csv_lines = (sweep / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,method_options.hoc.lam,seeds,AC_mean,AC_std,AM_mean")
    assert any(ln.startswith("hoc,0.1,1 2 3,0.6667,0.5774,62.0000,2.0000") for ln in csv_lines)
    assert (sweep / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((sweep / "summary.json").read_text())["rows"] == json.loads(
        json.dumps(payload["rows"])
    )


def test_summary_refuses_a_truncated_metrics_file_with_its_repair(tmp_path):
    sweep = tmp_path / "s"
    _write_setting(sweep, "hoc-a", "hoc", 0.1, [_run(1, [[60.0], [61.0, 60.0]], [50.0, 40.0])])
    path = sweep / "runs" / "hoc-a" / "metrics.json"
    path.write_text(path.read_text()[:40])
    index = {"format": 1, "invocations": [], "settings": {
        "a": {"method": "hoc", "name": "hoc-a", "values": {}, "seeds": [1]}}}  # fmt: skip
    with pytest.raises(InputError, match=r"metrics.json: not valid JSON .*rebuilt from") as e:
        write_summary(sweep, index)
    assert "\n" not in str(e.value)


def test_sweep_dir_refuses_a_foreign_directory_and_a_second_sweep(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("x")
    with pytest.raises(ValueError, match="not a sweep directory"):
        SweepDir(tmp_path / "busy")
    sweep = SweepDir(tmp_path / "s")
    with (
        sweep.lock(),
        pytest.raises(ValueError, match="another compatkit sweep"),
        SweepDir(tmp_path / "s").lock(),
    ):
        pass


# --------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_sweep_killed_and_continued_equals_an_uninterrupted_sweep(tmp_path, fake_fashion):
    """SIGKILL after the first run finished and while the second is half-way; the same
    command then keeps the first, resumes the second from its last task, and gives the
    numbers of an uninterrupted sweep run in two processes."""
    out = tmp_path / "killed"
    args = ["sweep", str(TINY), "--set", "methods=[hoc]", "--set", "seeds=[7]",
            "--vary", "train.epochs=1,40", "--threads", "1", "--out", str(out)]  # fmt: skip
    proc = start_cli(args, fake_fashion)
    index = out / "sweep.json"
    wait_for(index.is_file, proc)
    names = {e["values"]["train.epochs"]: e["name"]
             for e in json.loads(index.read_text())["settings"].values()}  # fmt: skip
    first, second = out / "runs" / names["1"], out / "runs" / names["40"]
    first_done = first / "hoc" / "seed_7" / "done.json"
    # a task is finished when its checkpoint and then its memory file are written
    second_task0 = second / "hoc" / "seed_7" / "memory_0.pt"
    wait_for(lambda: first_done.is_file() and second_task0.is_file(), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (second / "hoc" / "seed_7" / "done.json").exists()
    assert not (out / "summary.md").exists()
    kept = first_done.read_text()
    kept_mtime = first_done.stat().st_mtime_ns

    r = _cli(args, fake_fashion)
    assert "1 of 2 runs already finished" in r.stderr
    assert first_done.stat().st_mtime_ns == kept_mtime and first_done.read_text() == kept
    assert "resuming after task" in (second / "log.txt").read_text()
    assert (out / "summary.md").is_file() and (out / "front.png").is_file()

    # The same grid, never interrupted, in two processes of one thread each.
    ref = tmp_path / "ref"
    ref_args = [*args[:-1], str(ref), "--jobs", "2"]
    _cli(ref_args, fake_fashion)
    for epochs, name in names.items():
        got = json.loads((out / "runs" / name / "metrics.json").read_text())["hoc"]
        want = json.loads((ref / "runs" / name / "metrics.json").read_text())["hoc"]
        for key in ("matrix", "AC", "AM", "local_accuracy"):
            assert got[key] == want[key], (epochs, key)
    summary = json.loads((out / "summary.json").read_text())
    assert [len(r["seeds"]) for r in summary["rows"]] == [1, 1] and not summary["pending"]
    # a third invocation finds everything done and changes nothing
    r = _cli(args, fake_fashion)
    assert "2 of 2 runs already finished" in r.stderr


@pytest.mark.slow
def test_sweep_over_three_seeds_aggregates_and_reports(tmp_path, fake_fashion):
    out = tmp_path / "s"
    r = _cli(
        ["sweep", str(TINY), "--vary", "seeds=[7],[8],[9]", "--vary",
         "method_options.hoc.lam=0.1,0.9", "--out", str(out), "--quiet"],
        fake_fashion,
    )  # fmt: skip
    payload = json.loads((out / "summary.json").read_text())
    assert sorted(r_["method"] for r_ in payload["rows"]) == ["er", "hoc", "hoc"]
    for row in payload["rows"]:
        assert row["seeds"] == [7, 8, 9]
        metrics = json.loads((out / row["dir"] / "metrics.json").read_text())
        per_seed = [run["AM"] for run in metrics[row["method"]]["runs"]]
        mean = sum(per_seed) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in per_seed) / 2)
        assert row["stats"]["AM"]["mean"] == pytest.approx(mean)
        assert row["stats"]["AM"]["std"] == pytest.approx(std)
        assert (out / row["dir"] / "report.md").is_file()
    assert "summary:" in r.stdout and "front" in (out / "summary.md").read_text()
    dry = _cli(
        ["sweep", str(TINY), "--vary", "seeds=[7],[8],[9]", "--vary",
         "method_options.hoc.lam=0.1,0.9", "--out", str(out), "--dry-run"],
        fake_fashion,
    )  # fmt: skip
    assert "9 of 9 runs already finished" in dry.stderr
    assert dry.stdout.count(": finished") == 3


@pytest.mark.slow
def test_sweep_cli_refusals(tmp_path, fake_fashion):
    for extra, msg in (
        (["--vary", "train.lr=0.1,[1"], "unbalanced"),
        (["--vary", "train.nope=1,2"], "train.nope"),
        (["--jobs", "0"], "--jobs"),
    ):
        r = _cli(["sweep", str(TINY), "--out", str(tmp_path / "x"), *extra], fake_fashion,
                 check=False)  # fmt: skip
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x" / "runs").exists()


def test_a_later_invocation_finds_a_setting_by_hash_not_by_name(tmp_path):
    """The first sweep varies only the rate; a second one varies lambda too, and its point
    with the default lambda is the same setting: same directory, seeds added to it."""
    sweep = SweepDir(tmp_path / "s")
    first = expand(TINY, ["methods=[hoc]"], parse_vary(["train.lr=0.001,0.01"]))
    sweep.add(first, ["sweep", "first"])
    second = expand(
        TINY,
        ["methods=[hoc]", "seeds=[7,8]"],
        parse_vary(["method_options.hoc.lam=0.1,0.5", "train.lr=0.001,0.01"]),
    )
    sweep.add(second, ["sweep", "second"])
    assert len(second) == 4 and len(sweep.index["settings"]) == 4
    for s in first:
        twin = next(t for t in second if t.hash == s.hash)  # lam 0.1 is the config's value
        assert twin.name != s.name and sweep.setting_dir(twin) == sweep.setting_dir(s)
        assert sweep.index["settings"][s.hash]["seeds"] == [7, 8]
        on_disk = yaml.safe_load((sweep.setting_dir(s) / "config.yaml").read_text())
        assert on_disk["seeds"] == [7, 8]
    pending, finished = sweep.jobs(second)
    assert len(pending) == 8 and not finished


def test_settings_that_differ_by_a_set_value_get_their_own_column(tmp_path):
    """A later invocation may change a value with --set instead of --vary (another HOC form):
    the summary shows that key, so the two settings are not printed as one row twice; keys that
    shape nothing (providers_dir, name) stay out."""
    sweep = tmp_path / "s"
    run = [_run(1, [[60.0], [61.0, 60.0]], [50.0, 40.0])]
    for name, form, prov in (("hoc-t", "textbook", "/a"), ("hoc-r", "reference", "/b")):
        _write_setting(sweep, name, "hoc", 0.1, run)
        p = sweep / "runs" / name / "config.yaml"
        cfg = yaml.safe_load(p.read_text())
        cfg["method_options"]["hoc"]["form"] = form
        cfg.update(providers_dir=prov, name=name)
        p.write_text(yaml.safe_dump(cfg))
    index = {
        "format": 1,
        "invocations": [{"command": "c1"}, {"command": "c2"}],
        "settings": {
            h: {"method": "hoc", "name": n, "values": {"method_options.hoc.lam": "0.1"},
                "seeds": [1]}
            for h, n in (("t", "hoc-t"), ("r", "hoc-r"))
        },
    }  # fmt: skip
    payload = write_summary(sweep, index)
    assert payload["varied"] == ["method_options.hoc.lam", "method_options.hoc.form"]
    forms = {r["setting"]: r["values"]["method_options.hoc.form"] for r in payload["rows"]}
    assert forms == {"hoc-t": "textbook", "hoc-r": "reference"}
    md = (sweep / "summary.md").read_text()
    assert "| hoc | 0.1 | reference | 1 |" in md and "| hoc | 0.1 | textbook | 1 |" in md
    header = next(ln for ln in md.splitlines() if ln.startswith("| method |"))
    assert header.startswith("| method | hoc.lam | hoc.form | seeds |"), header
    assert "providers" not in header and "name" not in header


@pytest.mark.slow
def test_keep_going_runs_the_rest_of_a_grid_past_a_diverging_job(tmp_path, fake_fashion):
    """A learning rate of 1e6 makes the loss non-finite: without --keep-going that job's
    error is the sweep's (exit 2); with it the other setting finishes, the failure is listed
    (exit 3) and recorded in the job's record, and the grid's summary covers what finished."""
    args = ["sweep", str(TINY), "--set", "methods=[hoc]", "--set", "seeds=[7]",
            "--vary", "train.lr=1e6,0.01", "--threads", "1"]  # fmt: skip
    r = _cli([*args, "--out", str(tmp_path / "stop")], fake_fashion, check=False)
    assert r.returncode == 2 and "non-finite" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "go"
    r = _cli([*args, "--out", str(out), "--keep-going"], fake_fashion, check=False)
    assert r.returncode == 3, r.stderr
    assert "1 of 2 jobs did not finish" in r.stderr and "non-finite" in r.stderr
    settings = json.loads((out / "sweep.json").read_text())["settings"].values()
    names = {e["values"]["train.lr"]: e["name"] for e in settings}
    bad, good = out / "runs" / names["1e6"], out / "runs" / names["0.01"]
    assert (good / "metrics.json").is_file() and not (bad / "metrics.json").exists()
    job = json.loads((bad / "hoc" / "seed_7" / "job.json").read_text())
    assert "non-finite" in job["failed"] and job["seed"] == 7
    summary = json.loads((out / "summary.json").read_text())
    assert [row["dir"] for row in summary["rows"]] == [f"runs/{names['0.01']}"]
