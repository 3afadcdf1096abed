"""The shipped configurations: every file in configs/ loads and validates; the paper's CIFAR
configurations hold the authors' released setting, plan its step counts, and give a valid
data plan on tiny fake data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from compatkit.config import ConfigError, load_config
from compatkit.protocol.plan import make_plan
from tests.data.formats import write_cifar_batch, write_imagenet32_batch

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
def test_cifar_configs_hold_the_released_settings(name):
    """The authors' released code, value by value (docs/method.md §7; where src/ and the notebooks
    differ, the notebooks, which printed the released numbers)."""
    cfg = load_config(CONFIGS / name)
    want = PAPER[name]
    assert cfg.seeds == [42] and cfg.methods == ["hoc", "er"]
    assert cfg.method_options == {"hoc": {"lam": 0.1, "mu": 10.0, "form": "reference"}}
    assert cfg.precision == "fp32"  # the notebooks (src/: fp16 autocast)
    m = cfg.model
    assert m.backbone == "resnet18" and m.num_classes == 1024  # ImageNet-style ResNet-18, K
    assert m.feat_dim is None  # K-1 = 1023: fc1, the junction of the d-Simplex model
    assert (m.learnable_feature, m.learnable_replacement) == ("backbone", "fresh")  # ER: 512-d
    loc = cfg.local
    assert (loc.data.dataset, loc.data.split) == ("cifar100", "train")
    assert loc.data.per_class is None and loc.data.select == "first"  # all 500 (notebooks)
    assert loc.data.classes == list(range(100))  # natural order
    assert (loc.initial_increment, loc.increment) == (10, want["increment"])
    assert loc.memory_per_class == 20
    assert cfg.replacement_tasks == want["replacements"] and not cfg.no_replacement
    assert cfg.old_model == "reference"
    tr = cfg.train
    assert (tr.epochs, tr.batch_size, tr.lr, tr.min_lr) == (70, 128, 1e-3, 1e-5)
    assert (tr.momentum, tr.weight_decay, tr.weight_decay_on) == (0.9, 5e-4, "all")
    assert (tr.pad, tr.flip, tr.warmup_epochs, tr.freeze_bn) == (4, True, 0, False)
    assert (tr.sampler, tr.lr_update) == ("balanced", "epoch")
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


def write_fake_cifar100(
    root: Path, rng: np.random.Generator, per_class: int = CIFAR100_PER_CLASS, protocol: int = 2
) -> None:
    """Protocol 2 is the official files'; 5 writes a full-size set many times faster."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(folder / "meta", {b"fine_label_names": [f"f{k}".encode() for k in range(100)]})
    for member, per in (("train", per_class), ("test", 1)):
        labels = rng.permutation(np.repeat(np.arange(100), per)).tolist()
        images = _images(rng, len(labels))
        write_cifar_batch(folder / member, images, labels, b"fine_labels", protocol)


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


# --------------------------------------------------------------------------- planned steps

# The released rule, by hand (dataset_utils.BalancedBatchSampler and main.py): task 0 is a
# DataLoader(batch 128, drop_last) over its 10 x 500 images; a later task t has
# (n_new + n_memory) // 128 batches, n_memory = 20 images x the classes of tasks 0..t-1.
STEPS_7 = [
    5000 // 128,  # 39
    (15 * 500 + 20 * 10) // 128,  # 7,700 -> 60
    (15 * 500 + 20 * 25) // 128,  # 8,000 -> 62
    (15 * 500 + 20 * 40) // 128,  # 8,300 -> 64
    (15 * 500 + 20 * 55) // 128,  # 8,600 -> 67
    (15 * 500 + 20 * 70) // 128,  # 8,900 -> 69
    (15 * 500 + 20 * 85) // 128,  # 9,200 -> 71
]
STEPS_31 = [5000 // 128] + [(3 * 500 + 20 * (10 + 3 * (t - 1))) // 128 for t in range(1, 31)]


def test_hand_computed_steps():
    assert STEPS_7 == [39, 60, 62, 64, 67, 69, 71]
    assert STEPS_31[:3] == [39, 13, 13] and STEPS_31[-1] == (1500 + 20 * 97) // 128 == 26


@pytest.fixture(scope="module")
def full_cifar100(tmp_path_factory) -> Path:
    """CIFAR-100's training set at its real size: 500 images of each class (random pixels)."""
    root = tmp_path_factory.mktemp("cifar100_full")
    write_fake_cifar100(root, np.random.default_rng(1), per_class=500, protocol=5)
    return root


@pytest.mark.parametrize(
    ("name", "want"), [("cifar100_7tasks.yaml", STEPS_7), ("cifar100_31tasks.yaml", STEPS_31)]
)
def test_planned_steps_per_task_follow_the_released_sampler(name, want, full_cifar100, fake_roots):
    keep = ("local.data.per_class", "local.memory")
    over = [o for o in fake_overrides(fake_roots) if not o.startswith(keep)]
    over = [o.replace(str(fake_roots["cifar100"]), str(full_cifar100)) for o in over]
    over += [f"providers.{i}.checkpoint={{simplex: p{i}.pt, learnable: q{i}.pt}}" for i in range(3)]
    cfg = load_config(CONFIGS / name, over)
    plan = make_plan(cfg)  # the released providers replace training: no ImageNet32 needed
    assert len(plan.local) == 100 * 500
    assert plan.epoch_steps(cfg) == want
    assert sum(want) * cfg.train.epochs == {7: 30_240, 31: 43_890}[plan.num_tasks]
    # compatkit's default sampler passes over each new image once per epoch instead:
    # ceil(5,000 / 128) = 40 batches of task 0, ceil(n_new / 64) half-new batches later.
    cfg.train.sampler = "shuffle"
    n_new = 500 * PAPER[name]["increment"]
    assert plan.epoch_steps(cfg)[:2] == [40, -(-n_new // 64)]


def test_the_packaged_configs_are_the_repository_configs():
    """One copy: src/compatkit/configs (package data) names the same files as configs/."""
    from compatkit.config.shipped import shipped_configs

    shipped = shipped_configs()
    assert sorted(shipped) == sorted(p.stem for p in ALL if p.suffix == ".yaml")
    for name, path in shipped.items():
        assert path.read_bytes() == (CONFIGS / f"{name}.yaml").read_bytes(), name
