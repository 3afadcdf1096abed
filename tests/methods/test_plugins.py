"""Methods from outside compatkit: the ``compatkit.methods`` entry points and a config's
``plugins``, then the method through the real command line (run and sweep)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from compatkit import methods
from compatkit.config import load_config
from compatkit.errors import ConfigError
from compatkit.methods import METHODS, Method, load_plugins, register_method

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "examples" / "plugin"
TINY = REPO / "tests" / "e2e" / "tiny.yaml"

METHOD_SOURCE = """
from dataclasses import dataclass

from compatkit.losses import cross_entropy
from compatkit.methods import Method, register_method


@register_method
class {cls}(Method):
    name = "{name}"
    head = "simplex"

    @dataclass
    class Config:
        scale: float = 1.0

    def loss(self, step):
        ce = self.cfg.scale * cross_entropy(step.out.logits, step.targets)
        return ce, {{"ce": ce.detach()}}
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path; the registry is restored after the test."""
    before = dict(methods.load_all())
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in set(METHODS) - set(before):
        del METHODS[name]
    for mod in [m for m in sys.modules if m.startswith("ck_plugin_")]:
        del sys.modules[mod]


def test_a_config_names_a_module_that_registers_a_method(plugin_dir, fake_fashion, monkeypatch):
    (plugin_dir / "ck_plugin_a.py").write_text(METHOD_SOURCE.format(cls="A", name="plugin-a"))
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))
    with pytest.raises(ConfigError, match="unknown method 'plugin-a'"):
        load_config(TINY, ["methods=[plugin-a]"])
    cfg = load_config(TINY, ["plugins=[ck_plugin_a]", "methods=[plugin-a]"])
    assert cfg.methods == ["plugin-a"] and METHODS["plugin-a"].__module__ == "ck_plugin_a"
    cfg = load_config(TINY, ["plugins=[ck_plugin_a]", "method_options={plugin-a: {scale: 2}}"])
    assert cfg.method_options["plugin-a"] == {"scale": 2.0}  # typed by the plugin's Config
    with pytest.raises(ConfigError, match=r"method_options.plugin-a.size: .* has no such option"):
        load_config(TINY, ["plugins=[ck_plugin_a]", "method_options={plugin-a: {size: 2}}"])
    load_plugins(["ck_plugin_a"])  # importing it again is harmless


def test_a_broken_or_clashing_plugin_is_one_line_naming_it(plugin_dir):
    (plugin_dir / "ck_plugin_broken.py").write_text("import a_module_that_is_not_there\n")
    with pytest.raises(ConfigError, match=r"plugins\[0\] 'ck_plugin_broken' cannot be loaded: "):
        load_plugins(["ck_plugin_broken"])
    with pytest.raises(ConfigError, match=r"plugins\[0\] 'ck_plugin_nowhere' cannot be loaded"):
        load_plugins(["ck_plugin_nowhere"])
    (plugin_dir / "ck_plugin_clash.py").write_text(METHOD_SOURCE.format(cls="HOC", name="hoc"))
    with pytest.raises(ConfigError, match=r"'hoc' is defined twice: by compatkit.methods.hoc.HOC"):
        load_plugins(["ck_plugin_clash"])

    class Same(Method):
        name = "plugin-same"

    assert register_method(Same) is register_method(Same)


def test_entry_points_of_installed_packages_are_loaded(plugin_dir, monkeypatch):
    """What pip writes for a package with an entry point (a dist-info folder) is found."""
    (plugin_dir / "ck_plugin_ep.py").write_text(METHOD_SOURCE.format(cls="EP", name="plugin-ep"))
    info = plugin_dir / "ck_plugin_ep-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ck-plugin-ep\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[compatkit.methods]\nplugin-ep = ck_plugin_ep\n")
    monkeypatch.setattr(methods, "_loaded", False)  # discover again, as a new process would
    assert "plugin-ep" in methods.load_all()
    (info / "entry_points.txt").write_text("[compatkit.methods]\nbad = ck_plugin_missing:X\n")
    monkeypatch.setattr(methods, "_loaded", False)
    with pytest.raises(ConfigError, match=r"entry point 'bad' of ck-plugin-ep 1.0 .* cannot be"):
        methods.load_all()
    (info / "entry_points.txt").unlink()


def _env(target: Path, fake_fashion: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=str(target),
        COMPATKIT_FASHION_MNIST=str(fake_fashion),
        COMPATKIT_CACHE=str(tmp_path / "cache"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


@pytest.mark.slow
def test_an_installed_package_runs_its_method_through_run_and_sweep(tmp_path, fake_fashion):
    """The example package, installed by pip, runs through `compatkit run` and `sweep` by its
    entry point alone (nothing names it in the config)."""
    target = tmp_path / "site"
    env = _env(target, fake_fashion, tmp_path)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    r = subprocess.run(
        [*pip, "--target", str(target), str(PLUGIN)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target / "compatkit_l2" / "method.py").is_file()
    cli = [sys.executable, "-m", "compatkit"]
    run = tmp_path / "run"
    r = subprocess.run(
        [*cli, "run", str(TINY), "--set", "methods=[ce-l2,hoc]", "--out", str(run), "--quiet"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert m["_meta"]["methods"] == ["ce-l2", "hoc"]
    assert len(m["ce-l2"]["matrix"]) == 3 and 0 <= m["ce-l2"]["AC"] <= 1
    from compatkit.checkpoint import read_contract

    extra = read_contract(run / "ce-l2" / "seed_7" / "task_1.pt")["extra"]
    assert extra["method"] == "ce-l2" and "l2" in extra["loss_parts"][-1]  # its own loss ran
    sweep = tmp_path / "sweep"
    r = subprocess.run(
        [*cli, "sweep", str(TINY), "--set", "methods=[ce-l2]", "--vary",
         "method_options.ce-l2.lam=0.5,2", "--out", str(sweep), "--quiet"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads((sweep / "summary.json").read_text())["rows"]
    assert sorted(float(r["values"]["method_options.ce-l2.lam"]) for r in rows) == [0.5, 2.0]
    # without the package on the path, the same config is refused in one line
    env.pop("PYTHONPATH")
    r = subprocess.run(
        [*cli, "run", str(TINY), "--set", "methods=[ce-l2]", "--dry-run"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2 and "unknown method 'ce-l2'" in r.stderr
    assert textwrap.dedent(r.stderr).count("\n") == 1
