"""Run configuration: dataclasses with defaults, a YAML file on top, then ``--set`` overrides.

Everything is validated before any training starts (DESIGN.md principle 7):
unknown keys, wrong types and impossible settings are refused with one
message that names the key. The resolved configuration is written into the
run directory, so every result carries the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.sampler import SAMPLERS
from .errors import ConfigError

__all__ = [
    "MAX_CLASSES",
    "MAX_FEAT_DIM",
    "MAX_THREADS",
    "ConfigError",
    "ConfigFileNotFound",
    "DataSource",
    "EvalConfig",
    "LocalConfig",
    "ModelConfig",
    "OptimConfig",
    "ProviderConfig",
    "RunConfig",
    "load_config",
    "read_config_file",
    "to_dict",
]


@dataclass
class DataSource:
    """Where a set of images comes from."""

    dataset: str = "fashion-mnist"
    """Loader name: fashion-mnist, mnist, cifar10, cifar100, imagenet32, folder."""
    split: str = "train"
    """``train`` or ``test``."""
    root: str | None = None
    """Directory of the files; None = the loader's search order (env vars, system package)."""
    classes: list[int] | None = None
    """Dataset labels to use; None = all classes. Selected after the whole split is loaded
    (ImageNet32's train split is 3.9 GB of uint8 in memory)."""
    per_class: int | None = None
    """Images per class; None = all that are free (the released notebooks: all 500 of each
    CIFAR-100 class)."""
    select: str = "random"
    """Which ``per_class`` images: ``random`` (drawn without replacement with data_seed) or
    ``first`` (the first ones of each class in file order among those no earlier role took:
    the released ``src/`` keeps the first 300; see docs/reproduce.md)."""
    download: bool = False
    """Fetch the files from their official location (checksums verified) when not found."""


@dataclass
class ModelConfig:
    backbone: str = "smallcnn"
    """Registry name (compatkit.backbones) or timm:<name> / tv:<name>."""
    num_classes: int = 32
    """K, the pre-allocated classes of the fixed heads (paper: 1024). Local classes take rows
    K-1, K-2, ...; provider classes rows 0, 1, ...; the two must fit in K together."""
    feat_dim: int | None = None
    """Feature dimension. None = K-1, which the d-Simplex head requires; learnable and ETF
    heads use the same dimension unless set (ETF needs >= K-1)."""
    etf_seed: int = 0
    """Seed of the ETF frame's rotation: models are comparable only with the same seed."""
    learnable_feature: str = "junction"
    """Retrieval feature of learnable-head methods (ER, LwF, BCT, BCT-ER, FD, CVS):
    ``junction`` = a bias-free linear layer to feat_dim on the backbone, as every head has
    (compatkit's default); ``backbone`` = the pooled backbone output itself, no junction (the
    released code: 512-d for ResNet-18)."""
    learnable_replacement: str = "keep"
    """A learnable-head model at a replacement: ``keep`` the provider's classifier rows and
    append rows for the local classes (compatkit's default); ``fresh`` = drop the provider's
    classifier and build a new one for the seen local classes, one row per class in order of
    arrival (the released code; with the natural class order, class y -> row y)."""


@dataclass
class OptimConfig:
    """SGD with momentum and a cosine schedule (METHOD.md Sec. 4)."""

    epochs: int = 10
    """Passes over the task's new data (paper: 70)."""
    batch_size: int = 128
    """Images per step; after the first task half come from the rehearsal memory."""
    lr: float = 1e-3
    """Initial learning rate (paper: 1e-3 for fine-tuning)."""
    min_lr: float = 1e-5
    """Cosine decay floor (paper: 1e-5)."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    """L2 penalty on conv/linear weights only: none on norms and biases (paper)."""
    pad: int = 4
    """Random-crop padding in pixels (paper: 4 on 32x32 images); 0 disables the crop."""
    flip: bool = True
    """Random horizontal flip."""
    warmup_epochs: int = 0
    """Linear warm-up at the start of the schedule, in epochs (0 = none)."""
    lr_update: str = "step"
    """When the cosine learning rate changes: every ``step`` (compatkit's default, a smooth
    decay) or once per ``epoch`` (the released CosineAnnealingLR(T_max=epochs, eta_min=min_lr),
    stepped after each epoch)."""
    sampler: str = "shuffle"
    """How an epoch's batches are drawn (``compatkit.data.sampler``). ``shuffle``
    (compatkit's default): one shuffled pass over the new images, each exactly once per epoch;
    after the first task every batch is half new, half memory (memory cycled evenly); the
    last partial batch is kept. ``balanced`` (the released BalancedBatchSampler): after the
    first task an epoch is (new + memory images) // batch_size batches, each drawn
    independently, half from memory and half new; the first task (no memory) is a plain
    shuffle with the last partial batch dropped."""
    weight_decay_on: str = "weights"
    """Which parameters weight_decay applies to: ``weights`` = conv/linear weights only,
    none on norms and biases (compatkit's default and the released ``src/``); ``all`` =
    every trained parameter (the released notebooks, which printed the paper's numbers)."""
    freeze_bn: bool = False
    """Keep BatchNorm running statistics fixed while fine-tuning (affine weights still train).
    Tasks of one or two classes would otherwise overwrite the statistics with those of a narrow
    distribution, moving the features of every class the task does not contain."""


@dataclass
class LocalConfig:
    """The local learner: classes arriving task after task, with a small rehearsal memory."""

    data: DataSource = field(default_factory=DataSource)
    initial_increment: int = 2
    """Classes in the first task (paper: 10)."""
    increment: int = 2
    """Classes in each later task (paper: 15 or 3)."""
    memory_per_class: int = 20
    """Images kept per seen class for rehearsal (paper: 20)."""
    keep_provider_rows: bool = False
    """A local class that the task's provider already knows keeps the provider's head row
    (its vertex, on a fixed head) instead of a new row from the bottom (K-1-y), so every
    class sits on one vertex for the life of the scenario. The local accuracy of a task model
    then includes what its provider knew: the report's gain over the task's start is what the
    local learner added. False: local classes always take their own rows (the paper's setting,
    where provider and local label spaces are disjoint)."""


@dataclass
class ProviderConfig:
    """A model "pre-trained elsewhere", used at the start and at each replacement."""

    name: str = ""
    data: DataSource = field(default_factory=DataSource)
    epochs: int = 10
    """Training epochs of this provider (its quality knob, with data and backbone)."""
    backbone: str | None = None
    """None = model.backbone; a bigger backbone makes a better provider."""
    lr: float = 0.05
    """Providers are trained from scratch, so with a larger rate than fine-tuning."""
    batch_size: int = 128
    checkpoint: dict[str, str] | None = None
    """Use these files instead of training: {head kind: path} (e.g. {simplex: a.pt})."""


@dataclass
class EvalConfig:
    """Open-set retrieval evaluation on images no model trained on (METHOD.md Sec. 4)."""

    query: DataSource = field(default_factory=lambda: DataSource(split="test"))
    gallery: DataSource = field(default_factory=lambda: DataSource(split="test"))
    batch_size: int = 1024
    """Images per forward pass during feature extraction."""
    full_gallery: bool = True
    """Also compute recall@1 and mAP against the full gallery (not only templates)."""


@dataclass
class RunConfig:
    name: str = "run"
    seeds: list[int] = field(default_factory=lambda: [42])
    """One scenario per seed (paper: 42); results are reported as mean and spread."""
    data_seed: int = 0
    """Fixes which images go to the local learner, the providers and the evaluation, for every
    run seed, so providers trained once are reused without seeing local or test images."""
    methods: list[str] = field(default_factory=lambda: ["hoc", "er"])
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-method hyperparameters, e.g. {hoc: {lam: 0.1, mu: 10, form: textbook}}."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N."""
    precision: str = "auto"
    """auto (bf16 on CUDA when supported, else fp16; fp32 on CPU), fp32, bf16, fp16."""
    channels_last: bool = True
    """Channels-last memory format on CUDA (ignored on CPU)."""
    compile: bool = False
    """torch.compile the model (CUDA; slow first steps)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    providers: list[ProviderConfig] = field(default_factory=list)
    replacement_tasks: list[int] = field(default_factory=lambda: [2, 4])
    """Zero-based tasks that start from the next provider (task 0 always starts from provider
    0). Paper, 7 tasks: [2, 4]; 31 tasks: [10, 20]."""
    no_replacement: bool = False
    """Ignore replacement_tasks: fine-tune provider 0 through every task (paper Fig. 4b)."""
    old_model: str = "reference"
    """Old model of the compatibility term: ``reference`` (at a replacement, the new provider
    itself; otherwise the previous task's model) or ``previous`` (always the previous model)."""
    train: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    providers_dir: str | None = None
    """Where trained providers are cached; None = <out>/../providers (shared by runs)."""
    num_workers_threads: int = 0
    """CPU threads for torch (0 = torch's default; at most MAX_THREADS)."""


# --------------------------------------------------------------------------- bounds

MAX_CLASSES = 8192
"""Largest K accepted. The fixed heads hold a K x (K-1) matrix, built in float64: K = 8,192 is
512 MiB while building and 256 MiB in every checkpoint, 8 times the paper's K = 1,024; a typo
such as K = 10**6 would ask for terabytes and fail deep inside torch."""
MAX_FEAT_DIM = 16384
"""Largest feature dimension accepted: 2 x MAX_CLASSES, room for an ETF head (d >= K-1) at the
largest K, while a learnable K x d head stays within 512 MiB of float32."""
MAX_THREADS = 1024
"""Largest num_workers_threads accepted: torch's OpenMP pool aborts the whole process (no
Python error) when it cannot create the threads asked for (seen at 100,000); 1,024 is beyond
the hardware threads of any machine torch runs on today."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Every integer of a config must fit in int64: seeds and counts reach torch, which stores
them in 64 bits and fails with an overflow deep in a run otherwise."""


# --------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (after ``from __future__`` resolution)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        _check_plain_numbers(value, key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return _check_int(value, key)
    if tp is float:
        return _to_float(value, key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _check_int(value: int, key: str) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ConfigError(f"{key}: {_short(value)} does not fit in a 64-bit integer")
    return value


def _short(value: Any) -> str:
    """A value for a one-line message: a 5,000-digit integer is shown by its size."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _to_float(value: Any, key: str) -> float:
    """A finite float, or a ConfigError naming ``key``.

    Every float of the configuration goes through here, so a field added later is covered
    without new code: NaN and infinity (YAML ``.nan``/``.inf``, or strings such as ``nan``
    and ``1e999`` that ``float()`` accepts) would otherwise train a model to NaN and report
    it as a result.
    """
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {_short(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {_short(value)}")
    try:
        out = float(value)
    except OverflowError:
        raise ConfigError(f"{key}: {_short(value)} is too large for a number") from None
    if not math.isfinite(out):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    return out


_MAX_FREE_NODES = 10_000
"""Values a free-form (``Any``) config entry may hold. YAML aliases let a few lines expand to
billions of values (the "billion laughs"); no option of a method needs more than a few."""


def _check_plain_numbers(value: Any, key: str, budget: list[int] | None = None) -> None:
    """Finite floats and int64 integers inside a free-form (``Any``) value, at every depth."""
    budget = [_MAX_FREE_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"{key}: more than {_MAX_FREE_NODES} values in one entry")
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if isinstance(value, int):
        _check_int(value, key)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_plain_numbers(v, f"{key}.{k}", budget)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain_numbers(v, f"{key}[{i}]", budget)


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s}; valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _set_path(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur: Any = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError) as e:
                raise ConfigError(f"--set {dotted}: no list item {p!r}") from e
            continue
        if p not in cur or cur[p] is None:
            cur[p] = {}
        if not isinstance(cur[p], (dict, list)):
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[: i + 1])} is not a mapping")
        cur = cur[p]
    last = parts[-1]
    if isinstance(cur, list):
        try:
            cur[int(last)] = value
        except (ValueError, IndexError) as e:
            raise ConfigError(f"--set {dotted}: no list item {last!r}") from e
    else:
        cur[last] = value


class ConfigFileNotFound(ConfigError, FileNotFoundError):
    """The config file named does not exist (also a FileNotFoundError, as before)."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line} (first at line {first})")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    Plain ``yaml.safe_load`` keeps the last value silently, so a config holding two
    ``train:`` blocks would run with half of its settings ignored.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, line, seen[key])
                seen[key] = line
            except TypeError:  # unhashable key: the base constructor reports it
                pass
        return super().construct_mapping(node, deep=deep)


def _yaml_load(text: str, where: str) -> Any:
    """Parse YAML text strictly; every failure is one ConfigError line naming ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no tags run
    except _DuplicateKey as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where} is not valid YAML: nested too deeply") from None


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``key.sub=value`` pairs; the value is read as YAML (``3``, ``0.1``, ``[1, 2]``, ``true``)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ConfigError(f"--set expects key=value, got {item!r} (no key)")
        out.append((k.strip(), _yaml_load(v, f"--set {k.strip()}")))
    return out


def read_config_file(path: str | Path) -> dict:
    """The mapping of a YAML config file; one ConfigError line naming the file otherwise."""
    p = Path(path)
    if not p.exists():
        raise ConfigFileNotFound(f"config file {p} does not exist")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a regular file")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
            f"{e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror or e})") from None
    data = _yaml_load(text, f"config file {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then ``--set`` overrides; validated."""
    data: dict = read_config_file(path) if path is not None else {}
    base = to_dict(RunConfig())
    merged = _merge(base, data)
    for k, v in parse_overrides(overrides or []):
        _set_path(merged, k, v)
    cfg = _build(RunConfig, merged)
    validate(cfg)
    return cfg


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


# --------------------------------------------------------------------------- validation


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
        import torch

        n = int(device.split(":", 1)[1])
        if torch.cuda.is_available() and n >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), numbered from 0"
            )


def _check_name(key: str, name: str) -> None:
    """Names become file and folder names: one plain path component."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise ConfigError(
            f"{key}: {name!r} cannot name a file or folder (no slashes, no surrounding spaces)"
        )


def _check_data_source(key: str, src: DataSource) -> None:
    from .data.datasets import DATASETS, _canonical

    if _canonical(src.dataset) not in DATASETS:
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
    from .methods import METHODS, build_method

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
        typed = {k: _coerce(v, hints[k], f"method_options.{m}.{k}") for k, v in opts.items()}
        cfg.method_options[m] = typed
        try:
            build_method(m, typed)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"method_options.{m}: {e}") from None


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _sources(cfg: RunConfig) -> list[tuple[str, DataSource]]:
    """Every data source of the config with its key (a source added later is included)."""
    return [(key, src) for key, src in _walk(cfg) if isinstance(src, DataSource)]


def validate(cfg: RunConfig) -> None:
    """Static checks that need no data; data-dependent checks run in ``protocol.plan``."""
    from .backbones import check_backbone_name
    from .methods import METHODS, load_all

    load_all()
    _check_name("name", cfg.name)
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
    if not 0 <= cfg.num_workers_threads <= MAX_THREADS:
        raise ConfigError(
            f"num_workers_threads must lie in 0..{MAX_THREADS} (0 = torch's default), "
            f"got {cfg.num_workers_threads}"
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
            _check_name(f"providers[{i}].name", p.name)
        if p.backbone is not None:
            check_backbone_name(f"providers[{i}].backbone", p.backbone)
        _positive(f"providers[{i}].epochs", p.epochs)
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
