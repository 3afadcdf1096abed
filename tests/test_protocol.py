"""The task sequence: replacements, the old-model rule, provider reuse, and resume."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch

import compatkit.protocol.trainer as protocol
from compatkit.checkpoint import load_checkpoint, read_contract, save_checkpoint
from compatkit.config import load_config
from compatkit.errors import CheckpointError
from compatkit.protocol.experiment import Experiment
from compatkit.runtime.log import RunLog

from .conftest import write_fake_fashion

TINY = Path(__file__).parent / "e2e" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _data(fake_fashion, monkeypatch):
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))


def _runner(tmp_path, name, overrides=()):
    cfg = load_config(TINY, ["methods=[hoc]", *overrides])
    return Experiment(cfg, tmp_path / name, RunLog(tmp_path / name / "log.txt", quiet=True))


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_gives_the_same_numbers(tmp_path, monkeypatch):
    whole = _runner(tmp_path, "whole")
    whole.providers.ensure()
    whole.run_sequence("hoc", 7)
    expected = whole.evaluate()["hoc"]

    broken = _runner(tmp_path, "broken")
    real = protocol.train_task
    calls = {"n": 0}

    def crash_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(protocol, "train_task", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        broken.run_sequence("hoc", 7)
    d = broken.run_dir / "hoc" / "seed_7"
    assert (d / "task_1.pt").is_file() and not (d / "task_2.pt").exists()
    monkeypatch.setattr(protocol, "train_task", real)
    resumed = _runner(tmp_path, "broken")
    resumed.run_sequence("hoc", 7, resume=True)
    got = resumed.evaluate()["hoc"]
    assert got["matrix"] == expected["matrix"]
    a, _ = load_checkpoint(whole.run_dir / "hoc/seed_7/task_2.pt")
    b, _ = load_checkpoint(d / "task_2.pt")
    assert _same_weights(a, b)


@pytest.mark.parametrize("rule", ["reference", "previous"])
def test_old_model_rule_at_a_replacement(tmp_path, monkeypatch, rule):
    r = _runner(tmp_path, rule, [f"old_model={rule}"])
    paths = r.providers.ensure()
    seen = []
    real = protocol.train_task

    def spy(model, method, ctx, *a, **k):
        seen.append((ctx.task_id, ctx.old_model))
        return real(model, method, ctx, *a, **k)

    monkeypatch.setattr(protocol, "train_task", spy)
    r.run_sequence("hoc", 7)
    p0, _ = load_checkpoint(paths[(0, "simplex")])
    p1, _ = load_checkpoint(paths[(1, "simplex")])
    t1, _ = load_checkpoint(r.run_dir / "hoc/seed_7/task_1.pt")
    t0, _ = load_checkpoint(r.run_dir / "hoc/seed_7/task_0.pt")
    (_, old0), (_, old1), (_, old2) = seen
    assert _same_weights(old0.backbone, p0.backbone)  # task 0: the provider itself
    assert _same_weights(old1.backbone, t0.backbone)  # inside a segment: the previous model
    expected = p1 if rule == "reference" else t1  # task 2 is a replacement
    assert _same_weights(old2.backbone, expected.backbone)
    assert not any(p.requires_grad for p in old2.parameters())


def test_replacement_starts_from_the_next_provider(tmp_path):
    r = _runner(tmp_path, "rep", ["train.lr=1e-12", "train.min_lr=0"])
    paths = r.providers.ensure()
    r.run_sequence("hoc", 7)
    p1, _ = load_checkpoint(paths[(1, "simplex")])
    t2, meta = load_checkpoint(r.run_dir / "hoc/seed_7/task_2.pt")
    # with a vanishing learning rate the task-2 model is still provider 1 (up to BN stats)
    w1 = p1.backbone.features[0].weight
    w2 = t2.backbone.features[0].weight
    assert torch.allclose(w1, w2, atol=1e-6)
    assert meta["extra"]["replaced"] and meta["extra"]["provider"] == 1
    assert sorted(t2.class_map.local) == [0, 1, 2, 3]
    assert t2.class_map.local[3] == 10 - 1 - 3  # local classes from the bottom
    assert set(t2.class_map.provider) == {4, 5}  # provider classes kept, from the top


def test_providers_are_reused(tmp_path):
    r = _runner(tmp_path, "reuse")
    paths = r.providers.ensure()
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    r2 = _runner(tmp_path, "reuse2")
    paths2 = r2.providers.ensure()
    assert paths2 == paths
    assert {k: p.stat().st_mtime_ns for k, p in paths2.items()} == stamps
    assert "reusing" in (tmp_path / "reuse2" / "log.txt").read_text()


def test_provider_checkpoint_with_wrong_head_is_refused(tmp_path):
    r = _runner(tmp_path, "prov", ["methods=[er]"])
    paths = r.providers.ensure()
    learnable = str(paths[(0, "learnable")])
    bad = _runner(tmp_path, "bad", [f"providers.0.checkpoint={{simplex: {learnable}}}"])
    with pytest.raises(ValueError, match=r"providers\[0\]\.checkpoint\.simplex"):
        bad.providers.ensure()


def test_released_er_replacement_builds_a_fresh_head(tmp_path):
    """learnable_replacement=fresh: at a replacement the provider's classifier is dropped and
    one row per seen local class is built; with learnable_feature=backbone the feature is the
    pooled backbone output (no junction), as in the released ER."""
    over = [
        "methods=[er]",
        "model.learnable_feature=backbone",
        "model.learnable_replacement=fresh",
        "train.lr=1e-12",
        "train.min_lr=0",
    ]
    r = _runner(tmp_path, "fresh", over)
    paths = r.providers.ensure()
    r.run_sequence("er", 7)
    p1, _ = load_checkpoint(paths[(1, "learnable")])
    assert p1.junction is None and p1.spec.feat_dim == 128 and set(p1.class_map.provider) == {4, 5}
    t1, _ = load_checkpoint(r.run_dir / "er/seed_7/task_1.pt")
    t2, meta = load_checkpoint(r.run_dir / "er/seed_7/task_2.pt")
    assert meta["extra"]["replaced"] and meta["contract"]["junction"] is False
    assert t2.class_map.provider == {} and t2.class_map.local == {0: 0, 1: 1, 2: 2, 3: 3}
    assert t2.head.num_rows == 4  # exactly the seen local classes
    assert torch.allclose(t2.backbone.features[0].weight, p1.backbone.features[0].weight, atol=1e-6)
    # Inside a segment the rows are kept and the new class appended.
    assert t1.class_map.local == {0: 0, 1: 1, 2: 2} and t1.head.num_rows == 3
    t0, _ = load_checkpoint(r.run_dir / "er/seed_7/task_0.pt")
    assert t0.class_map.local == {0: 0, 1: 1} and t0.class_map.provider == {}  # fresh at task 0
    assert torch.allclose(t1.head.weight[:2], t0.head.weight, atol=1e-6)  # rows kept (lr ~ 0)


def test_default_er_replacement_keeps_the_provider_rows(tmp_path):
    r = _runner(tmp_path, "keep", ["methods=[er]"])
    r.providers.ensure()
    r.run_sequence("er", 7)
    t2, meta = load_checkpoint(r.run_dir / "er/seed_7/task_2.pt")
    assert meta["contract"]["junction"] is True and set(t2.class_map.provider) == {4, 5}


@pytest.mark.parametrize("sampler", ["shuffle", "balanced"])
def test_the_runner_takes_the_planned_steps(tmp_path, monkeypatch, sampler):
    r = _runner(tmp_path, sampler, [f"train.sampler={sampler}", "train.epochs=2"])
    r.providers.ensure()
    counted: list[int] = []
    real = protocol.train_task

    def spy(*a, on_step=None, **k):
        n = [0]

        def count(s):
            n[0] += 1
            on_step(s)

        res = real(*a, on_step=count, **k)
        counted.append(n[0])
        return res

    monkeypatch.setattr(protocol, "train_task", spy)
    r.run_sequence("hoc", 7)
    assert counted == [2 * s for s in r.plan.epoch_steps(r.cfg)]


# --------------------------------------------------------------------------- provider reuse


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """These tests damage cached providers: a cache of their own, not the session's."""
    monkeypatch.setenv("COMPATKIT_CACHE", str(tmp_path / "cache"))


def _providers(tmp_path, name="prov", overrides=()):
    r = _runner(tmp_path, name, ["methods=[hoc, er]", *overrides])
    return r, r.providers.ensure()


def _swap(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())


@pytest.mark.parametrize(
    ("intruder", "named"),
    [
        ("learnable version", "head='learnable'"),  # a learnable provider over a simplex one
        ("task checkpoint", "class_map"),  # a fine-tuned model, local classes and all
        ("another K", "feat_dim=11"),  # the same provider for a head of K = 12
        ("another provider", "recipe"),  # same contract and classes, another recipe
    ],
)
def test_a_cached_provider_is_checked_before_reuse(tmp_path, own_cache, intruder, named):
    r, paths = _providers(tmp_path)
    target = paths[(0, "simplex")]
    if intruder == "learnable version":
        _swap(paths[(0, "learnable")], target)
    elif intruder == "task checkpoint":
        r.run_sequence("hoc", 7)
        _swap(r.run_dir / "hoc/seed_7/task_0.pt", target)
    elif intruder == "another K":
        _, other = _providers(tmp_path, "k12", ["model.num_classes=12"])
        _swap(other[(0, "simplex")], target)
    else:
        _swap(paths[(1, "simplex")], target)  # provider 1 knows the same classes [4, 5]
    again = _runner(tmp_path, "again", ["methods=[hoc, er]"])
    with pytest.raises(CheckpointError, match=named) as e:
        again.providers.ensure()
    assert str(target) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=named):
        again.run_sequence("hoc", 7)  # the sequence loads providers through the same check


def test_a_configured_provider_may_not_hold_local_classes(tmp_path, own_cache):
    r, _ = _providers(tmp_path)
    r.run_sequence("hoc", 7)
    task = r.run_dir / "hoc/seed_7/task_0.pt"
    model, _ = load_checkpoint(task)
    unlabelled = tmp_path / "mine.pt"  # a user's own file: no record of what it is
    save_checkpoint(unlabelled, model, extra={})
    for path, why in ((task, "is a task checkpoint"), (unlabelled, "holds local classes")):
        bad = _runner(tmp_path, "bad", [f"providers.0.checkpoint={{simplex: {path}}}"])
        with pytest.raises(CheckpointError, match=rf"providers\[0\]\.checkpoint\.simplex.*{why}"):
            bad.providers.check()


def test_trained_providers_record_their_recipe(tmp_path):
    r, paths = _providers(tmp_path)
    for (i, h), p in paths.items():
        extra = read_contract(p)["extra"]
        assert extra["recipe"] == r.providers.recipe(i, h) and extra["recipe"] in p.name
        assert extra["role"] == "provider" and extra["index"] == i


def test_the_recipe_covers_the_data_itself(tmp_path, fake_fashion, monkeypatch):
    """The cache is shared by every run: the same config on other files is another provider."""
    r = _runner(tmp_path, "a")
    first = r.providers.path(0, "simplex")
    other = write_fake_fashion(tmp_path / "other-data", seed=1)
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(other))
    r2 = _runner(tmp_path, "b")
    assert first != r2.providers.path(0, "simplex")
    assert first.parent == r2.providers.path(0, "simplex").parent


# --------------------------------------------------------------------------- what a user sees


def test_training_and_evaluation_show_progress_with_tasks_numbered_from_1(tmp_path):
    screen = io.StringIO()
    r = _runner(tmp_path, "shown")
    r.log = RunLog(tmp_path / "shown" / "log.txt", quiet=False, live=True, stream=screen)
    r.providers.ensure()
    r.run_sequence("hoc", 7)
    r.evaluate()
    r.log.close()
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # colours out
    assert "hoc seed 7 task 3/3 (replacement)" in shown  # the training bar
    evaluation = shown[shown.index("evaluating hoc seed 7") :]  # the evaluation bar, whose
    assert "6/6 task 3/3: local accuracy" in evaluation  # last state is always drawn
    log = (tmp_path / "shown" / "log.txt").read_text()
    assert "hoc seed 7 task 1/3: classes [0, 1]" in log
    assert "hoc seed 7 task 3/3 (replacement): classes [3]" in log
    assert "task 0" not in log and "replaced" not in log
