"""Configuration: precedence, and refusal of bad keys, types and impossible settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from compatkit.config import ConfigError, load_config
from compatkit.protocol.plan import make_plan

TINY = Path(__file__).parent / "e2e" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _data(fake_fashion, monkeypatch):
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))


def test_defaults_then_file_then_overrides():
    cfg = load_config(TINY, ["train.epochs=3", "seeds=[1, 2]", "providers.0.epochs=4"])
    assert cfg.train.epochs == 3 and cfg.seeds == [1, 2]
    assert cfg.providers[0].epochs == 4 and cfg.providers[1].epochs == 1  # file value kept
    assert cfg.train.momentum == 0.9  # default kept
    assert cfg.train.batch_size == 16  # file value


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epoch=3", "train.epoch"),
        ("modle.backbone=x", "modle"),
        ("train.epochs=three", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("train.flip=1", "train.flip"),
        ("seeds=5", "seeds"),
        ("methods=[hoc, nosuch]", "nosuch"),
        ("method_options={hoc: {lamda: 0.5}}", "method_options.hoc"),
        ("method_options={hoc: {form: other}}", "form"),
        ("replacement_tasks=[0]", "replacement_tasks"),
        ("replacement_tasks=[1, 2]", "providers"),
        ("precision=fp8", "precision"),
        ("train.batch_size=1", "train.batch_size"),
        ("model.num_classes=1", "num_classes"),
        ("model.feat_dim=7", "feat_dim"),
        ("old_model=oldest", "old_model"),
    ],
)
def test_static_refusals_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(TINY, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("replacement_tasks=[3]", "past the last task"),
        ("model.num_classes=6", "too small"),
        ("local.memory_per_class=17", "memory_per_class"),
        ("local.data.per_class=100", "per_class"),
        ("local.data.classes=[0, 1, 9]", "local.data.classes"),
        ("local.increment=3", "cannot be split"),
        ("eval.query.per_class=40", "eval.query.per_class"),
    ],
)
def test_data_dependent_refusals(override, needle):
    cfg = load_config(TINY, [override])
    with pytest.raises(ConfigError, match=needle):
        make_plan(cfg)


def test_plan_partitions_images_between_roles():
    plan = make_plan(load_config(TINY))

    # Providers and the query set draw from the same split as the local learner: no image is
    # shared. Images are random, so identical bytes mean the same image.
    def keys(s):
        return {bytes(x.numpy().tobytes()) for x in s.images}

    local, q = keys(plan.local), keys(plan.query)
    p0, p1 = keys(plan.providers[0]), keys(plan.providers[1])
    assert not (local & q) and not (local & p0) and not (p0 & p1) and not (p1 & q)
    assert len(plan.scenario) == 3 and [t.classes for t in plan.scenario] == [[0, 1], [2], [3]]
    assert plan.segments(load_config(TINY)) == [0, 0, 1]
