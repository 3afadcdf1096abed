"""A sweep directory edited or damaged by hand: every file a sweep reads back from it is
checked, each fault is one line with exit 2, and nothing is ever written outside ``--out``."""

from __future__ import annotations

import json
import os

import pytest

from compatkit.cli import main
from compatkit.errors import InputError
from compatkit.sweep import SweepDir, expand, parse_vary
from compatkit.sweep.cluster import SubmititLauncher
from compatkit.sweep.cluster_options import ClusterOptions

from ..commands.cli import TINY
from ..commands.cli import run_cli as _cli

ARGS = ["--set", "methods=[hoc]", "--vary", "train.epochs=1,2"]


def _sweep(tmp_path):
    """A real sweep directory (index and configs written by compatkit), not run yet."""
    out = tmp_path / "a" / "b" / "sweep"
    settings = expand(TINY, ["methods=[hoc]"], parse_vary(["train.epochs=1,2"]))
    SweepDir(out).add(settings, ["sweep", str(TINY), *ARGS, "--out", str(out)])
    return out


def _edit(out, change) -> None:
    index = json.loads((out / "sweep.json").read_text())
    change(index)
    (out / "sweep.json").write_text(json.dumps(index))


def _first(index):
    return next(iter(index["settings"].values()))


def _refused(out, msg, capsys):
    """The real command line (in this process: the refusals come before any training), as a
    dry run and as a run: exit 2 and one line."""
    for mode in (["--dry-run"], []):
        code = main(["sweep", str(TINY), *ARGS, "--out", str(out), "--quiet", *mode])
        err = capsys.readouterr().err
        assert code == 2, err
        assert msg in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("name", ["../../../escape_dir", "/tmp/escape_dir", "..", ".hidden",
                                  "a/b", ""])  # fmt: skip
def test_a_setting_name_outside_the_sweep_is_refused(tmp_path, capsys, name):
    out = _sweep(tmp_path)
    _edit(out, lambda ix: _first(ix).update(name=name))
    before = sorted(p for p in tmp_path.rglob("*"))
    _refused(out, f".name {name!r} is not a folder name inside", capsys)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not (tmp_path / "a" / "escape_dir").exists()


@pytest.mark.parametrize(
    ("change", "msg"),
    [
        (lambda ix: _first(ix).update(seeds="x"), "seeds must be a list of integers, got 'x'"),
        (lambda ix: _first(ix).update(seeds=[7, 1.5]), "seeds must be a list of integers"),
        (lambda ix: _first(ix).update(seeds=[True]), "seeds must be a list of integers"),
        (lambda ix: _first(ix).update(seeds=[2**70]), "seeds must be a list of integers"),
        (lambda ix: _first(ix).update(method="../hoc"), "method '../hoc' is not a method name"),
        (lambda ix: _first(ix).update(values=["x"]), "values must map config keys"),
        (lambda ix: ix["settings"].update(x=_first(ix)), "setting 'x' is not a setting hash"),
        (lambda ix: ix.update(settings=[]), "'settings' must be a mapping"),
        (lambda ix: ix.update(format=2), "not a compatkit sweep index"),
        (lambda ix: ix["invocations"].append(7), "invocations[1] must hold a command"),
    ],
)
def test_a_damaged_index_entry_is_one_line(tmp_path, capsys, change, msg):
    out = _sweep(tmp_path)
    _edit(out, change)
    _refused(out, msg, capsys)


def test_two_settings_with_one_name_and_a_truncated_index(tmp_path, capsys):
    out = _sweep(tmp_path)

    def same(ix):
        a, b = ix["settings"].values()
        b["name"] = a["name"]

    _edit(out, same)
    _refused(out, "have the same name", capsys)
    text = (out / "sweep.json").read_text()
    (out / "sweep.json").write_text(text[: len(text) // 2])
    _refused(out, "sweep index", capsys)


def test_a_setting_folder_that_is_a_link_out_of_the_sweep_is_refused(tmp_path, fake_fashion):
    out = _sweep(tmp_path)
    name = _first(json.loads((out / "sweep.json").read_text()))["name"]
    target = tmp_path / "elsewhere"
    target.mkdir()
    real = out / "runs" / name
    for p in real.iterdir():
        p.unlink()
    real.rmdir()
    real.symlink_to(target, target_is_directory=True)
    r = _cli(["sweep", str(TINY), *ARGS, "--out", str(out)], fake_fashion, check=False)
    assert (
        r.returncode == 2 and "a link; a setting's run directory must be a real folder" in r.stderr
    )
    assert list(target.iterdir()) == []


def test_a_launcher_record_cannot_name_a_path(tmp_path):
    out = _sweep(tmp_path)
    rec = out / "launcher" / "submitit" / "jobs.json"
    rec.parent.mkdir(parents=True)
    launcher = SubmititLauncher(out, ClusterOptions(cluster="local"), 1, 1, [], print)
    for bad in ("../../../x", "1/../../x", "12 34", 7):
        rec.write_text(json.dumps({"format": 1, "cluster": "local",
                                   "jobs": {"abc:7": {"job_id": bad, "attempts": 1}}}))  # fmt: skip
        with pytest.raises(InputError, match="not a compatkit submitit record"):
            launcher._load()
    rec.write_text(json.dumps({"format": 1, "cluster": "local",
                               "jobs": {"abc:7": {"job_id": "123_4", "attempts": 2}}}))  # fmt: skip
    assert launcher._load()["jobs"]["abc:7"]["job_id"] == "123_4"


@pytest.mark.slow
def test_providers_dir_that_cannot_hold_files(tmp_path, fake_fashion):
    """A providers_dir under a file (or, for a user who is not root, a read-only folder): one
    line naming it, before any provider is trained; a dry run says so too, writing nothing."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cache = tmp_path / "fresh-cache"  # nothing cached: the providers are to train
    cases = [(f"{blocker}/providers", "is not a folder", "cannot create the folder")]
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        cases.append((f"{ro}/providers", "is not writable", "cannot create the folder"))
    env_cache = {"COMPATKIT_CACHE": str(cache)}
    for path, dry_msg, run_msg in cases:
        out = tmp_path / "s"
        base = ["sweep", str(TINY), *ARGS, "--set", f"providers_dir={path}", "--out", str(out)]
        r = _run([*base, "--dry-run"], fake_fashion, env_cache)
        assert r.returncode == 2 and f"providers_dir {path}: " in r.stderr and dry_msg in r.stderr
        assert not out.exists()
        r = _run(base, fake_fashion, env_cache)
        assert r.returncode == 2 and f"providers_dir {path}: {run_msg}" in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]  # after the progress lines: one error line
        assert last.startswith(f"compatkit sweep: error: providers_dir {path}: ")
        assert not list(out.rglob("*.pt")) and not cache.exists()
    # a missing folder that can be made is no fault: a dry run names it and leaves it absent
    fresh = tmp_path / "new" / "providers"
    r = _run(["sweep", str(TINY), *ARGS, "--set", f"providers_dir={fresh}", "--out",
              str(tmp_path / "s2"), "--dry-run"], fake_fashion, env_cache)  # fmt: skip
    assert r.returncode == 0 and f"to train  {fresh}/" in r.stdout
    assert not (tmp_path / "new").exists() and not (tmp_path / "s2").exists()


def _run(args, fake_fashion, env):
    import subprocess
    import sys

    full = {**os.environ, "COMPATKIT_FASHION_MNIST": str(fake_fashion), "OMP_NUM_THREADS": "1",
            **env}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "compatkit", *args], env=full,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_damaged_results_of_a_finished_sweep_are_refused_then_rebuilt(tmp_path, fake_fashion):
    """A truncated metrics.json (or done.json) of a finished setting: one line saying how to
    repair it; deleting it and running the same command again rebuilds the same numbers."""
    out = tmp_path / "s"
    args = ["sweep", str(TINY), "--set", "methods=[hoc]", "seeds=[7]", "--vary",
            "train.epochs=1", "--threads", "1", "--out", str(out)]  # fmt: skip
    _cli(args, fake_fashion)
    (name,) = (e["name"] for e in json.loads((out / "sweep.json").read_text())["settings"].values())
    metrics = out / "runs" / name / "metrics.json"
    done = out / "runs" / name / "hoc" / "seed_7" / "done.json"
    want = json.loads(metrics.read_text())["hoc"]

    def rerun_refused(msg: str) -> None:
        r = _cli(args, fake_fashion, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        (line,) = [ln for ln in r.stderr.splitlines() if "error:" in ln]
        assert msg in line, line

    text = metrics.read_text()
    metrics.write_text(text[: len(text) // 3])
    rerun_refused("metrics.json: not valid JSON")
    rerun_refused("delete it and run a sweep command with that setting again")
    metrics.unlink()
    assert "1 of 1 runs already finished" in _cli(args, fake_fashion).stderr
    assert json.loads(metrics.read_text())["hoc"]["matrix"] == want["matrix"]

    metrics.unlink()
    done.write_text(done.read_text()[:10])
    rerun_refused(f"job record {done}: not valid JSON")
    rerun_refused("delete it and run the sweep again: that seed is evaluated again")
    done.write_text('{"seed": 7, "AC": "high"}')
    rerun_refused(f"job record {done}: not a compatkit job record")
    done.unlink()
    assert "0 of 1 runs already finished" in _cli(args, fake_fashion).stderr
    got = json.loads(metrics.read_text())["hoc"]
    assert (got["matrix"], got["AC"], got["AM"]) == (want["matrix"], want["AC"], want["AM"])
