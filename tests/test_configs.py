"""The shipped configurations: every file in configs/ loads and validates; the paper's CIFAR
configurations hold the paper's settings and give a valid data plan on tiny fake data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from compatkit.config import ConfigError, load_config
from compatkit.data.cifar import write_cifar_batch
from compatkit.data.imagenet32 import write_imagenet32_batch
from compatkit.plan import make_plan

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.glob("*.y*ml"))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} written twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def test_there_are_configs():
    assert {"fashion.yaml", "cifar100_7tasks.yaml", "cifar100_31tasks.yaml"} <= {
        p.name for p in ALL
    }


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
    yaml.load(path.read_text(), Loader=_StrictLoader)  # a SafeLoader subclass
    cfg = load_config(path)  # unknown keys, wrong types, impossible settings raise
    assert cfg.providers and cfg.methods and cfg.seeds


# --------------------------------------------------------------------------- paper settings

PAPER = {
    "cifar100_7tasks.yaml": {"increment": 15, "tasks": 7, "replacements": [2, 4]},
    "cifar100_31tasks.yaml": {"increment": 3, "tasks": 31, "replacements": [10, 20]},
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_cifar_configs_hold_the_paper_settings(name):
    """METHOD.md Sec. 4, value by value."""
    cfg = load_config(CONFIGS / name)
    want = PAPER[name]
    assert cfg.seeds == [42] and cfg.methods == ["hoc", "er"]
    assert cfg.model.backbone == "resnet18_cifar" and cfg.model.num_classes == 1024
    assert cfg.model.feat_dim is None  # K-1, as the d-Simplex needs
    loc = cfg.local
    assert (loc.data.dataset, loc.data.split, loc.data.per_class) == ("cifar100", "train", 300)
    assert loc.data.classes == list(range(100))
    assert (loc.initial_increment, loc.increment) == (10, want["increment"])
    assert loc.memory_per_class == 20
    assert cfg.replacement_tasks == want["replacements"] and not cfg.no_replacement
    assert cfg.old_model == "reference"
    tr = cfg.train
    assert (tr.epochs, tr.batch_size, tr.lr, tr.min_lr) == (70, 128, 1e-3, 1e-5)
    assert (tr.momentum, tr.weight_decay, tr.pad, tr.flip) == (0.9, 5e-4, 4, True)
    assert tr.warmup_epochs == 0 and tr.freeze_bn is False
    assert [len(p.data.classes or []) for p in cfg.providers] == [100, 300, 600]
    for p in cfg.providers:
        assert p.data.dataset == "imagenet32" and p.data.split == "train"
        assert p.data.classes == list(range(len(p.data.classes or [])))  # the first n classes
        assert p.lr == 0.1 and p.batch_size == 128 and p.backbone is None
    epochs = [p.epochs for p in cfg.providers]
    assert epochs == sorted(epochs)  # better and better
    q, g = cfg.eval.query, cfg.eval.gallery
    assert (g.dataset, g.split, g.classes, g.per_class) == ("cifar10", "test", None, None)
    assert (q.dataset, q.split, q.classes, q.per_class) == ("cifar10", "train", None, None)


def test_cifar_configs_differ_only_in_the_task_split():
    """The two scenarios share providers (same provider cache keys) and everything else."""
    a = yaml.safe_load((CONFIGS / "cifar100_7tasks.yaml").read_text())
    b = yaml.safe_load((CONFIGS / "cifar100_31tasks.yaml").read_text())
    for d in (a, b):
        d.pop("name")
        d["local"].pop("increment")
        d.pop("replacement_tasks")
    assert a == b


# --------------------------------------------------------------------------- tiny fake data

CIFAR100_PER_CLASS = 4  # local draws 3 of each (per_class override), 100 classes
CIFAR10_TRAIN, CIFAR10_TEST = 3, 2  # images per class of the fake CIFAR-10
IN32_CLASSES, IN32_PER_CLASS = 600, 3  # enough for providers drawing 1, 1, then the rest


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def write_fake_cifar100(root: Path, rng: np.random.Generator) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(folder / "meta", {b"fine_label_names": [f"f{k}".encode() for k in range(100)]})
    for member, per in (("train", CIFAR100_PER_CLASS), ("test", 1)):
        labels = rng.permutation(np.repeat(np.arange(100), per)).tolist()
        write_cifar_batch(folder / member, _images(rng, len(labels)), labels, b"fine_labels")


def write_fake_cifar10(root: Path, rng: np.random.Generator) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    _pickle(folder / "batches.meta", {b"label_names": [f"c{k}".encode() for k in range(10)]})
    train = rng.permutation(np.repeat(np.arange(10), CIFAR10_TRAIN)).tolist()
    for i, chunk in enumerate(np.array_split(np.asarray(train), 5), 1):
        write_cifar_batch(folder / f"data_batch_{i}", _images(rng, len(chunk)), chunk.tolist())
    test = np.repeat(np.arange(10), CIFAR10_TEST).tolist()
    write_cifar_batch(folder / "test_batch", _images(rng, len(test)), test)


def write_fake_imagenet32(root: Path, rng: np.random.Generator) -> None:
    for folder in ("Imagenet32_train", "Imagenet32_val"):
        (root / folder).mkdir(parents=True)
    labels = rng.permutation(np.repeat(np.arange(IN32_CLASSES), IN32_PER_CLASS))
    for i, chunk in enumerate(np.array_split(labels, 10), 1):
        path = root / "Imagenet32_train" / f"train_data_batch_{i}"
        write_imagenet32_batch(path, _images(rng, len(chunk)), chunk.tolist())
    write_imagenet32_batch(root / "Imagenet32_val" / "val_data", _images(rng, 5), [0, 1, 2, 3, 4])


@pytest.fixture(scope="module")
def fake_roots(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    roots = {k: tmp_path_factory.mktemp(k) for k in ("cifar100", "cifar10", "imagenet32")}
    write_fake_cifar100(roots["cifar100"], rng)
    write_fake_cifar10(roots["cifar10"], rng)
    write_fake_imagenet32(roots["imagenet32"], rng)
    return roots


def fake_overrides(roots: dict[str, Path]) -> list[str]:
    """Point every role at the fake files and shrink only the per-class counts."""
    out = [
        f"local.data.root={roots['cifar100']}",
        "local.data.download=false",
        "local.data.per_class=3",
        "local.memory_per_class=2",  # <= the 3 local images per class
        "providers.0.data.per_class=1",
        "providers.1.data.per_class=1",
    ]
    for role in ("query", "gallery"):
        out += [f"eval.{role}.root={roots['cifar10']}", f"eval.{role}.download=false"]
    out += [f"providers.{i}.data.root={roots['imagenet32']}" for i in range(3)]
    return out


@pytest.mark.parametrize("name", sorted(PAPER))
def test_cifar_configs_give_a_valid_plan_on_fake_data(name, fake_roots):
    want = PAPER[name]
    cfg = load_config(CONFIGS / name, fake_overrides(fake_roots))
    plan = make_plan(cfg)
    assert plan.num_tasks == want["tasks"]
    sizes = [len(plan.scenario.task_classes(t)) for t in range(plan.num_tasks)]
    assert sizes == [10] + [want["increment"]] * (want["tasks"] - 1)
    assert plan.class_order == list(range(100))
    assert len(plan.local) == 100 * 3
    assert plan.provider_classes == [list(range(n)) for n in (100, 300, 600)]
    # Providers 0 and 1 take one image per class each; provider 2 takes everything left.
    total = IN32_CLASSES * IN32_PER_CLASS
    assert [len(p) for p in plan.providers] == [100, 300, total - 100 - 300]
    assert len(plan.gallery) == 10 * CIFAR10_TEST and len(plan.query) == 10 * CIFAR10_TRAIN
    assert plan.local.images.shape[1:] == plan.query.images.shape[1:] == (3, 32, 32)
    for p in plan.providers:
        assert p is not None and p.images.shape[1:] == (3, 32, 32)
    r1, r2 = want["replacements"]
    assert plan.segments(cfg) == [0 if t < r1 else 1 if t < r2 else 2 for t in range(want["tasks"])]


def test_cifar_plan_refuses_a_k_too_small_for_provider_and_local_rows(fake_roots):
    """600 provider rows from the top and 100 local rows from the bottom need K >= 700."""
    over = [*fake_overrides(fake_roots), "model.num_classes=699"]
    with pytest.raises(ConfigError, match="num_classes K=699 is too small"):
        make_plan(load_config(CONFIGS / "cifar100_7tasks.yaml", over))
    over[-1] = "model.num_classes=700"
    assert make_plan(load_config(CONFIGS / "cifar100_7tasks.yaml", over)).num_tasks == 7


def test_the_packaged_configs_are_the_repository_configs():
    """One copy: src/compatkit/configs (package data) names the same files as configs/."""
    from compatkit.shipped import shipped_configs

    shipped = shipped_configs()
    assert sorted(shipped) == sorted(p.stem for p in ALL if p.suffix == ".yaml")
    for name, path in shipped.items():
        assert path.read_bytes() == (CONFIGS / f"{name}.yaml").read_bytes(), name
