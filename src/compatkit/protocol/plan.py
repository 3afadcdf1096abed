"""From a configuration to the concrete data of a scenario, checked before any training.

Every role (local learner, each provider, query set, gallery set) draws its
images from a shared pool per (dataset, split, root), *without replacement*:
whatever the configuration, no image is used by two roles, so providers are
trained "elsewhere" and evaluation is on images no model trained on. Draws
use ``data_seed`` and happen in a fixed order (local, providers in order,
gallery, query), so the partition is identical for every run seed and a
provider trained once can be reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import torch

from ..config import ConfigError, DataSource, RunConfig, to_dict
from ..data import DATASET_STATS, ClassIncremental, ImageSet, load_dataset, steps_per_epoch
from ..data.missing import DatasetNotFoundError
from ..errors import DataError

__all__ = ["Plan", "make_plan", "provider_key"]


class _Pool:
    """One loaded dataset split with a record of the images already handed out."""

    def __init__(self, data: ImageSet) -> None:
        self.data = data
        self.free = torch.ones(len(data), dtype=torch.bool)

    def draw(self, src: DataSource, gen: torch.Generator, role: str) -> ImageSet:
        labels = self.data.labels
        present = sorted(set(labels.tolist()))
        classes = src.classes if src.classes is not None else present
        missing = [c for c in classes if c not in present]
        if missing:
            raise ConfigError(
                f"{role}.classes: {missing} not in {src.dataset}/{src.split} "
                f"(labels {present[0]}..{present[-1]})"
            )
        if len(set(classes)) != len(classes):
            raise ConfigError(f"{role}.classes lists a class twice: {classes}")
        picked = []
        for c in classes:
            idx = torch.nonzero((labels == c) & self.free).flatten()
            n = len(idx) if src.per_class is None else src.per_class
            if n > len(idx):
                raise ConfigError(
                    f"{role}.per_class={src.per_class} but only {len(idx)} unused images of class "
                    f"{c} are left in {src.dataset}/{src.split} (other roles took the rest)"
                )
            if n == 0:
                raise ConfigError(f"{role}: no unused images of class {c} are left")
            if src.select == "first":  # the first n of the class in file order (released src/)
                idx = idx[:n]
            else:
                idx = idx[torch.randperm(len(idx), generator=gen)[:n]].sort().values
            picked.append(idx)
        sel = torch.cat(picked)
        self.free[sel] = False
        return self.data.subset(sel)


@dataclass
class Plan:
    """The resolved data of a scenario (CPU tensors; moved to the device when used)."""

    local: ImageSet
    class_order: list[int]
    scenario: ClassIncremental
    providers: list[ImageSet | None]
    """Training data of each provider (None when a checkpoint file replaces training)."""
    query: ImageSet
    gallery: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]
    provider_classes: list[list[int]] = field(default_factory=list)
    local_test: ImageSet | None = None
    """Unused test images of the local classes (None when there are none): the local
    learner's own classification accuracy, i.e. how much it learned, beside compatibility."""

    @property
    def num_tasks(self) -> int:
        return len(self.scenario)

    def epoch_steps(self, cfg: RunConfig, uses_memory: bool = True) -> list[int]:
        """Optimiser steps in one epoch of each task, as the trainer will take them.

        Task t trains on its own images and, after the first task, on the memory of the
        classes of tasks 0..t-1 (``memory_per_class`` each, or all a class has) when the
        method ``uses_memory``; ``steps_per_epoch`` turns that into batches for
        ``train.sampler``. Multiply by ``train.epochs`` for a task's steps.
        """
        counts = torch.bincount(self.local.labels)
        per = cfg.local.memory_per_class
        steps, seen = [], []
        for t in range(self.num_tasks):
            classes = self.scenario.task_classes(t)
            n_new = sum(int(counts[c]) for c in classes)
            use = uses_memory and t > 0 and per > 0
            n_mem = sum(min(per, int(counts[c])) for c in seen) if use else 0
            steps.append(steps_per_epoch(n_new, n_mem, cfg.train.batch_size, cfg.train.sampler))
            seen += classes
        return steps

    def segments(self, cfg: RunConfig) -> list[int]:
        """Provider index whose segment each task belongs to."""
        reps = [] if cfg.no_replacement else sorted(cfg.replacement_tasks)
        return [sum(1 for r in reps if r <= t) for t in range(self.num_tasks)]


def _stats(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if name in DATASET_STATS:
        mean, std = DATASET_STATS[name]
        return tuple(mean), tuple(std)
    return (0.5,) * channels, (0.25,) * channels


def make_plan(cfg: RunConfig, with_training_data: bool = True) -> Plan:
    """Load and partition the data, and run every data-dependent check of the configuration."""
    gen = torch.Generator().manual_seed(cfg.data_seed)
    pools: dict[tuple, _Pool] = {}
    sources = [cfg.local.data, cfg.eval.query, cfg.eval.gallery] + [p.data for p in cfg.providers]
    # A download asked for by one role serves every role reading the same dataset.
    fetch = {s.dataset for s in sources if s.download}

    def pool(src: DataSource, role: str) -> _Pool:
        key = (src.dataset, src.split, src.root)
        if key not in pools:
            try:
                data = load_dataset(src.dataset, src.split, src.root, src.dataset in fetch)
            except DatasetNotFoundError as e:
                raise e.for_key(role) from None
            except OSError as e:  # a file of the user's data that is missing or unreadable
                raise DataError(f"{src.dataset}/{src.split}: {' '.join(str(e).split())}") from e
            pools[key] = _Pool(data)
        return pools[key]

    loc = cfg.local
    # The images of each local class are drawn in sorted class order: the order of
    # local.data.classes is the task sequence only, so every order of the same classes gets
    # the same image partition (and the same providers).
    local_src = _unordered(loc.data)
    local = pool(loc.data, "local.data").draw(local_src, gen, "local.data")
    # Random crops pad by train.pad pixels on each side (providers use it as well): a pad as
    # large as the image crops mostly padding, and a huge one asks for a huge padded batch.
    if cfg.train.pad >= min(local.height, local.width):
        raise ConfigError(
            f"train.pad={cfg.train.pad} must be smaller than the {local.height}x{local.width} "
            f"images of local.data (paper: 4 pixels on 32x32)"
        )
    order = loc.data.classes if loc.data.classes is not None else sorted(set(local.labels.tolist()))
    n_tasks_cls = len(order) - loc.initial_increment
    if n_tasks_cls < 0 or n_tasks_cls % loc.increment:
        raise ConfigError(
            f"local: {len(order)} classes cannot be split as {loc.initial_increment} then "
            f"{loc.increment} per task"
        )
    scenario = ClassIncremental(local, order, loc.initial_increment, loc.increment, None, 0)
    t = len(scenario)
    if not cfg.no_replacement:
        late = [r for r in cfg.replacement_tasks if r >= t]
        if late:
            raise ConfigError(
                f"replacement_tasks {late} are past the last task ({t - 1}; {t} tasks)"
            )
    min_per_class = int(
        torch.bincount(local.labels).masked_select(torch.bincount(local.labels) > 0).min()
    )
    if loc.memory_per_class > min_per_class:
        raise ConfigError(
            f"local.memory_per_class={loc.memory_per_class} exceeds the {min_per_class} images of "
            "the smallest local class"
        )
    providers: list[ImageSet | None] = []
    provider_classes: list[list[int]] = []
    for i, p in enumerate(cfg.providers):
        if p.checkpoint:
            providers.append(None)
            provider_classes.append([])
            continue
        d = pool(p.data, f"providers.{i}.data").draw(p.data, gen, f"providers[{i}].data")
        providers.append(d)
        provider_classes.append(sorted(set(d.labels.tolist())))
    k = cfg.model.num_classes
    for i, pc in enumerate(provider_classes):
        # with keep_provider_rows a local class the provider knows takes no row of its own
        own = [c for c in order if not (loc.keep_provider_rows and c in pc)]
        if not own:
            continue
        top = max(pc) + 1 if pc else 0
        bottom = k - 1 - max(own)
        if top > bottom or len(own) + len(pc) > k:
            raise ConfigError(
                f"model.num_classes K={k} is too small: provider {i} uses rows 0..{top - 1} and "
                f"the local classes rows {bottom}..{k - 1 - min(own)}; raise K"
            )
    gallery = pool(cfg.eval.gallery, "eval.gallery").draw(cfg.eval.gallery, gen, "eval.gallery")
    query = pool(cfg.eval.query, "eval.query").draw(cfg.eval.query, gen, "eval.query")
    shared = set(query.labels.tolist()) & set(gallery.labels.tolist())
    if not shared:  # each query is searched for among its own class's gallery images
        raise ConfigError(
            f"eval.query: none of its classes {sorted(set(query.labels.tolist()))} is in the "
            f"gallery (eval.gallery: classes {sorted(set(gallery.labels.tolist()))}); they must "
            "share classes"
        )
    local_test = None
    test_src = DataSource(loc.data.dataset, "test", loc.data.root, sorted(order))
    try:  # whatever test images of the local classes no other role took
        local_test = pool(test_src, "local.data").draw(test_src, gen, "local test")
    except (ConfigError, FileNotFoundError, ValueError):
        local_test = None
    if local.channels != query.channels or local.height != query.height:
        raise ConfigError(
            f"eval images are {query.channels}x{query.height}x{query.width}, local images "
            f"{local.channels}x{local.height}x{local.width}: one model cannot read both"
        )
    mean, std = _stats(loc.data.dataset, local.channels)
    return Plan(
        local,
        list(order),
        scenario,
        providers,
        query,
        gallery,
        mean,
        std,
        provider_classes,
        local_test=local_test,
    )


def _unordered(src: DataSource) -> DataSource:
    """``src`` with its classes sorted: the same images, whatever order the tasks take."""
    if src.classes is None:
        return src
    return dataclasses.replace(src, classes=sorted(src.classes))


def _source_key(src: DataSource) -> dict:
    """A data source as part of a cache key."""
    return to_dict(src)


def _model_key(cfg: RunConfig, head: str) -> dict:
    """The model settings that decide a provider's weights: ``learnable_replacement`` acts
    after the provider is trained, ``learnable_feature`` only on learnable heads."""
    d = to_dict(cfg.model)
    d.pop("learnable_replacement", None)
    if head != "learnable" or d.get("learnable_feature") == "junction":
        d.pop("learnable_feature", None)
    return d


def provider_key(
    cfg: RunConfig,
    index: int,
    head: str,
    data_sha256: str | None = None,
    precision: str | None = None,
) -> str:
    """Cache key of a trained provider: everything that decides its weights.

    ``data_sha256`` is the digest of the provider's training images and labels and
    ``precision`` the resolved training precision (``Runner.provider_recipe`` passes
    both): the cache is shared by every run on a machine, so the same config on other
    data files, or trained in bf16 instead of fp32, must not find this provider.
    """
    provider = to_dict(cfg.providers[index])
    provider["data"] = _source_key(cfg.providers[index].data)
    blob = {
        "provider": provider,
        "earlier_providers": [_source_key(p.data) for p in cfg.providers[:index]],
        "local_data": _source_key(_unordered(cfg.local.data)),
        "model": _model_key(cfg, head),
        "head": head,
        "data_seed": cfg.data_seed,
        "augment": [cfg.train.pad, cfg.train.flip],
        "precision": precision or cfg.precision,
        "data_sha256": data_sha256,
    }
    s = json.dumps(blob, sort_keys=True)
    return hashlib.sha256(s.encode()).hexdigest()[:16]
