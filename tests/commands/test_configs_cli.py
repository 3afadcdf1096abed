"""First run: the shipped configs (package data), `compatkit configs`, `compatkit run --dry-run`,
and one providers cache shared by `pretrain` and `run`, from a folder that is not the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compatkit.config.shipped import DEFAULT_CONFIG, describe, resolve_config, shipped_configs

from .cli import TINY
from .cli import run_cli as _cli

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_configs_lists_every_shipped_config_with_what_it_runs(tmp_path, fake_fashion):
    r = _cli(["configs"], fake_fashion, cwd=tmp_path)
    lines = r.stdout.strip().splitlines()
    shipped = sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml"))
    assert [line.split()[0] for line in lines] == shipped
    fashion = next(line for line in lines if line.startswith("fashion "))
    assert "Fashion-MNIST" in fashion and "(default)" in fashion
    cifar = next(line for line in lines if line.startswith("cifar100_7tasks "))
    assert cifar.split(None, 1)[1] == describe(REPO_CONFIGS / "cifar100_7tasks.yaml")
    assert "7 tasks" in cifar and "docs/" not in cifar  # references in brackets left out


def test_configs_show_prints_the_shipped_file(tmp_path, fake_fashion):
    r = _cli(["configs", "show", "cifar100_31tasks"], fake_fashion, cwd=tmp_path)
    assert r.stdout == (REPO_CONFIGS / "cifar100_31tasks.yaml").read_text()
    path = _cli(["configs", "path", "fashion"], fake_fashion, cwd=tmp_path).stdout.strip()
    assert Path(path).read_bytes() == (REPO_CONFIGS / "fashion.yaml").read_bytes()


def test_the_default_config_is_the_packaged_one_wherever_we_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert resolve_config(None) == shipped_configs()[DEFAULT_CONFIG]
    assert resolve_config("configs/fashion_all.yaml") == shipped_configs()["fashion_all"]
    assert resolve_config("fashion_all") == shipped_configs()["fashion_all"]


def test_dry_run_prints_config_and_plan_and_creates_nothing(tmp_path, fake_fashion, monkeypatch):
    monkeypatch.setenv("COMPATKIT_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    r = _cli(["run", str(TINY), "--dry-run", "--set", "train.epochs=3"], fake_fashion, cwd=work)
    head, plan = r.stdout.split("\n# plan:", 1)
    cfg = yaml.safe_load(head)  # the resolved config is valid YAML, overrides applied
    assert cfg["train"]["epochs"] == 3 and cfg["methods"] == ["hoc", "er"]
    # 32 images, batch 16, no memory in task 1: 2 steps an epoch; then 16 new + memory
    # (half of each batch of 16): 2 steps an epoch
    assert "task 1/3: classes [0, 1], 32 images, starts from provider 0, 3 epochs = 6 steps" in plan
    assert "task 3/3 (replacement): classes [3], 16 images, starts from provider 1" in plan
    assert "provider 0 (p0): 16 images of classes [4, 5], 1 epoch = 1 step" in plan
    assert plan.count("to train:") == 4 and str(tmp_path / "cache" / "providers") in plan
    assert "query 20 images" in plan and "gallery 24 images" in plan
    assert list(work.iterdir()) == [] and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_pretrain_and_run_share_one_providers_cache(tmp_path, fake_fashion, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("COMPATKIT_CACHE", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    r = _cli(["pretrain", str(TINY), "--quiet"], fake_fashion, cwd=work)
    made = sorted((cache / "providers").glob("*.pt"))
    assert len(made) == 4 and all(str(p) in r.stdout for p in made)
    r = _cli(["run", str(TINY), "--out", "myrun", "--dry-run"], fake_fashion, cwd=work)
    assert r.stdout.count("cached, checked:") == 4 and "to train" not in r.stdout
    assert list(work.iterdir()) == []  # no providers (nor anything else) in the current folder
