"""Checks of a run configuration that need no data: every impossible setting, named.

Unknown methods and options, duplicated seeds or methods, out-of-range numbers, a K too small
or too large, a feature size the head cannot have, unknown datasets, names that cannot be
file names, replacements that need more providers than configured: each is refused here
with one message naming the key, before any data is loaded or any folder created. Checks
that need the data run when the plan is made (:func:`compatkit.protocol.plan.make_plan`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from typing import Any

import torch

from ..backbones import check_backbone_name
from ..data.datasets import DATASETS, canonical_name
from ..data.sampler import SAMPLERS
from ..errors import ConfigError
from ..methods import METHODS, build_method, load_plugins
from .parse import coerce
from .schema import MAX_CLASSES, MAX_EPOCHS, MAX_FEAT_DIM, DataSource, RunConfig, max_threads

__all__ = ["check_name", "validate"]


def _positive(key: str, v: float, allow_zero: bool = False) -> None:
    if v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {v}")


_DEVICE = re.compile(r"(auto|cpu|cuda(:[0-9]+)?)")
_SPLITS = ("train", "test")


def _walk(obj: Any, prefix: str = ""):
    """Every dataclass value of a config with its dotted key, depth first (lists indexed)."""
    if dataclasses.is_dataclass(obj):
        yield prefix, obj
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{prefix}[{i}]")


def _check_device(device: str) -> None:
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if ":" in device:
        n = int(device.split(":", 1)[1])
        if torch.cuda.is_available() and n >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), numbered from 0"
            )


def check_name(key: str, name: str) -> None:
    """Names become file and folder names: one plain path component."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise ConfigError(
            f"{key}: {name!r} cannot name a file or folder (no slashes, no surrounding spaces)"
        )


def _check_data_source(key: str, src: DataSource) -> None:

    if canonical_name(src.dataset) not in DATASETS:
        raise ConfigError(
            f"{key}.dataset: unknown dataset {src.dataset!r}; choose one of {sorted(DATASETS)}"
        )
    if src.split not in _SPLITS:
        raise ConfigError(f"{key}.split must be one of {list(_SPLITS)}, got {src.split!r}")
    if src.classes is not None:
        if not src.classes:
            raise ConfigError(f"{key}.classes is empty; list classes, or null for all of them")
        if len(set(src.classes)) != len(src.classes):
            raise ConfigError(f"{key}.classes lists a class twice: {src.classes}")
        if min(src.classes) < 0:
            raise ConfigError(f"{key}.classes: labels are >= 0, got {min(src.classes)}")
    if src.per_class is not None and src.per_class < 1:
        raise ConfigError(f"{key}.per_class must be >= 1 (or null for all), got {src.per_class}")


def _check_method_options(cfg: RunConfig) -> None:
    """Each method's options typed by its Config dataclass (so floats are finite there too)."""

    for m, opts in cfg.method_options.items():
        if m not in METHODS:
            raise ConfigError(f"method_options.{m}: unknown method; choose from {sorted(METHODS)}")
        opts = opts or {}
        hints = typing.get_type_hints(METHODS[m].Config)
        bad = sorted(set(opts) - set(hints), key=str)
        if bad:
            raise ConfigError(
                f"method_options.{m}.{bad[0]}: method {m!r} has no such option; its options "
                f"are {sorted(hints) or 'none'}"
            )
        typed = {k: coerce(v, hints[k], f"method_options.{m}.{k}") for k, v in opts.items()}
        cfg.method_options[m] = typed
        try:
            build_method(m, typed)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"method_options.{m}: {e}") from None


def _at_most_epochs(key: str, epochs: int) -> None:
    if epochs > MAX_EPOCHS:
        raise ConfigError(
            f"{key}={epochs} is more than {MAX_EPOCHS:,} epochs: such a run would not end "
            "(the paper trains 70); a typo?"
        )


def _check_query_classes(cfg: RunConfig) -> None:
    """Queries are searched against per-class templates of the gallery: a query set whose
    classes are all absent from the gallery can never be answered (the data-dependent case,
    a gallery of all its classes, is checked when the plan is made)."""
    q, g = cfg.eval.query.classes, cfg.eval.gallery.classes
    if q is not None and g is not None and not set(q) & set(g):
        raise ConfigError(
            f"eval.query.classes {q}: none of them is in eval.gallery.classes {g}; every query "
            "searches the gallery for its own class, so they must share classes"
        )


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _sources(cfg: RunConfig) -> list[tuple[str, DataSource]]:
    """Every data source of the config with its key (a source added later is included)."""
    return [(key, src) for key, src in _walk(cfg) if isinstance(src, DataSource)]


def validate(cfg: RunConfig) -> None:
    """Static checks that need no data; data-dependent checks run in ``protocol.plan``."""

    load_plugins(cfg.plugins)
    check_name("name", cfg.name)
    if not cfg.methods:
        raise ConfigError("methods: give at least one method")
    for m in cfg.methods:
        if m not in METHODS:
            raise ConfigError(f"methods: unknown method {m!r}; choose from {sorted(METHODS)}")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(f"methods: listed twice in {cfg.methods}")
    _check_method_options(cfg)
    if not cfg.seeds:
        raise ConfigError("seeds: give at least one seed")
    dup = sorted({s for s in cfg.seeds if cfg.seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"seeds: {dup[0]} is listed twice in {cfg.seeds}")
    if cfg.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {cfg.precision!r}")
    if cfg.old_model not in ("reference", "previous"):
        raise ConfigError(f"old_model must be 'reference' or 'previous', got {cfg.old_model!r}")
    _check_device(cfg.device)
    limit = max_threads()
    if not 0 <= cfg.num_workers_threads <= limit:
        raise ConfigError(
            f"num_workers_threads must lie in 0..{limit} (0 = torch's default; this machine has "
            f"{os.cpu_count()} hardware threads, and torch gains nothing from more), got "
            f"{cfg.num_workers_threads}"
        )
    k = cfg.model.num_classes
    if not 2 <= k <= MAX_CLASSES:
        raise ConfigError(
            f"model.num_classes (K) must lie in 2..{MAX_CLASSES} (the paper uses 1024), got {k}"
        )
    check_backbone_name("model.backbone", cfg.model.backbone)
    if cfg.model.feat_dim is not None:
        _positive("model.feat_dim", cfg.model.feat_dim)
        if cfg.model.feat_dim > MAX_FEAT_DIM:
            raise ConfigError(f"model.feat_dim must be <= {MAX_FEAT_DIM}, got {cfg.model.feat_dim}")
        heads = {METHODS[m].head for m in cfg.methods}
        if "simplex" in heads and cfg.model.feat_dim != k - 1:
            raise ConfigError(
                f"model.feat_dim={cfg.model.feat_dim} but the d-Simplex head needs K-1={k - 1}"
            )
        if "etf" in heads and cfg.model.feat_dim < k - 1:
            raise ConfigError(f"model.feat_dim={cfg.model.feat_dim} < K-1={k - 1} for the ETF head")
    for key, opt in (("train", cfg.train),):
        _positive(f"{key}.epochs", opt.epochs)
        _at_most_epochs(f"{key}.epochs", opt.epochs)
        _positive(f"{key}.lr", opt.lr)
        _positive(f"{key}.min_lr", opt.min_lr, allow_zero=True)
        _positive(f"{key}.weight_decay", opt.weight_decay, allow_zero=True)
        _positive(f"{key}.pad", opt.pad, allow_zero=True)
        _positive(f"{key}.warmup_epochs", opt.warmup_epochs, allow_zero=True)
        if not 0.0 <= opt.momentum < 1.0:
            raise ConfigError(f"{key}.momentum must lie in [0, 1), got {opt.momentum}")
        if opt.warmup_epochs > opt.epochs:
            raise ConfigError(
                f"{key}.warmup_epochs={opt.warmup_epochs} is longer than the "
                f"{opt.epochs} epochs of training ({key}.epochs)"
            )
        if opt.batch_size < 2:
            raise ConfigError(f"{key}.batch_size must be >= 2 (BatchNorm), got {opt.batch_size}")
        if opt.min_lr > opt.lr:
            raise ConfigError(f"{key}.min_lr={opt.min_lr} exceeds {key}.lr={opt.lr}")
        _one_of(f"{key}.lr_update", opt.lr_update, ("step", "epoch"))
        _one_of(f"{key}.sampler", opt.sampler, SAMPLERS)
        _one_of(f"{key}.weight_decay_on", opt.weight_decay_on, ("weights", "all"))
    _one_of("model.learnable_feature", cfg.model.learnable_feature, ("junction", "backbone"))
    _one_of("model.learnable_replacement", cfg.model.learnable_replacement, ("keep", "fresh"))
    for role, src in _sources(cfg):
        _one_of(f"{role}.select", src.select, ("random", "first"))
        _check_data_source(role, src)
    loc = cfg.local
    _positive("local.initial_increment", loc.initial_increment)
    _positive("local.increment", loc.increment)
    _positive("local.memory_per_class", loc.memory_per_class, allow_zero=True)
    if not cfg.providers:
        raise ConfigError("providers: at least one provider (the model of task 0) is needed")
    for i, p in enumerate(cfg.providers):
        if p.name:
            check_name(f"providers[{i}].name", p.name)
        if p.backbone is not None:
            check_backbone_name(f"providers[{i}].backbone", p.backbone)
        _positive(f"providers[{i}].epochs", p.epochs)
        _at_most_epochs(f"providers[{i}].epochs", p.epochs)
        _positive(f"providers[{i}].lr", p.lr)
        if p.batch_size < 2:
            raise ConfigError(f"providers[{i}].batch_size must be >= 2, got {p.batch_size}")
        if p.checkpoint:
            for h in p.checkpoint:
                if h not in ("simplex", "etf", "learnable"):
                    raise ConfigError(f"providers[{i}].checkpoint: unknown head kind {h!r}")
    reps = sorted(set(cfg.replacement_tasks))
    if reps != sorted(cfg.replacement_tasks):
        raise ConfigError(f"replacement_tasks lists a task twice: {cfg.replacement_tasks}")
    if any(r <= 0 for r in reps):
        raise ConfigError(
            f"replacement_tasks must be > 0 (task 0 always starts from provider 0): {reps}"
        )
    if not cfg.no_replacement and len(reps) + 1 > len(cfg.providers):
        raise ConfigError(
            f"replacement_tasks {reps} need {len(reps) + 1} providers, "
            f"only {len(cfg.providers)} are configured"
        )
    _positive("eval.batch_size", cfg.eval.batch_size)
    _check_query_classes(cfg)
