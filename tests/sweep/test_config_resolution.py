"""``sweep`` resolves its CONFIG as ``run`` does (shipped names, paths), a refusal names what
is at fault (the config file, the ``--set`` values, or a grid point), and ``--dry-run`` on
the README's command prints the grid, the jobs and the providers and writes nothing."""

from __future__ import annotations

import pytest

from compatkit.config import resolve_config
from compatkit.errors import ConfigError
from compatkit.sweep import expand, parse_vary

from ..commands.cli import TINY
from ..commands.cli import run_cli as _cli


def test_refusals_name_the_config_the_set_values_or_the_point(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {nope: 1}\n")
    lr = parse_vary(["train.lr=0.1,0.2"])
    cases = [
        (bad, [], lr, f"config {bad}: unknown config key train.nope"),
        (bad, [], [], f"config {bad}: unknown config key train.nope"),
        (TINY, ["train.nope=1"], lr, "--set train.nope=1: unknown config key train.nope"),
        (TINY, ["train.lr=-1"], [], "--set train.lr=-1: train.lr must be > 0"),
        (TINY, [], parse_vary(["train.lr=0.1,-1"]), "sweep point train.lr=-1: train.lr must be"),
        (TINY, [], parse_vary(["train.nope=1,2"]), "sweep point train.nope=1: unknown config key"),
    ]
    for config, sets, vary, msg in cases:
        with pytest.raises(ConfigError) as e:
            expand(config, sets, vary)
        assert str(e.value).startswith(msg), (str(e.value), msg)
    # a value that repairs a broken --set is the point's business, not the config's
    fixed = expand(TINY, ["train.lr=-1"], parse_vary(["train.lr=0.1,0.2"]))
    assert sorted(s.config["train"]["lr"] for s in fixed) == [0.1, 0.1, 0.2, 0.2]


@pytest.mark.parametrize("name", ["fashion", "fashion.yaml", "configs/fashion.yaml"])
def test_shipped_names_resolve_as_for_run(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not in a checkout: the packaged file
    settings = expand(resolve_config(name), ["methods=[hoc]"], parse_vary(["seeds=[1],[2]"]))
    assert len(settings) == 1 and settings[0].seeds == [1, 2]


def test_the_done_when_dry_run_writes_nothing(tmp_path, fake_fashion):
    out = tmp_path / "front"
    empty = tmp_path / "no-data"
    empty.mkdir()
    args = ["sweep", "fashion", "--set", "methods=[hoc]", "--vary",
            "method_options.hoc.lam=0.05,0.1", "--out", str(out), "--dry-run"]  # fmt: skip
    # no Fashion-MNIST here and downloads off: the providers are reported as not checked
    r = _cli(args, empty)
    assert not out.exists()
    assert "grid: 2 point(s)\n  method_options.hoc.lam: 0.05, 0.1\n" in r.stdout
    assert r.stdout.count(": to run: seeds [42]") == 2
    assert "jobs: 2 to run, 0 finished; local:" in r.stdout
    assert "providers: not checked, their data is not on this machine" in r.stdout
    assert "0 of 2 runs already finished" in r.stderr


def test_dry_run_lists_providers_and_an_existing_sweep_is_left_untouched(tmp_path, fake_fashion):
    out = tmp_path / "s"
    args = ["sweep", str(TINY), "--vary", "train.epochs=1,2", "--out", str(out), "--dry-run"]
    r = _cli(args, fake_fashion)
    assert "settings: 4" in r.stdout and "jobs: 4 to run, 0 finished" in r.stdout
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("  p")]
    # two providers in both head kinds (hoc: simplex, er: learnable), each to train or cached
    assert len(lines) == 4 and all(("to train" in ln) != ("cached" in ln) for ln in lines)
    assert not out.exists()
    out.mkdir()
    (out / ".lock").write_text("")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    _cli(args, fake_fashion)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
