"""The run configuration's schema: typed dataclasses with defaults, and the bounds of values.

A config file (YAML) and ``--set KEY=VALUE`` overrides fill these dataclasses
(:mod:`compatkit.config.parse`); every value is then checked before anything runs
(:mod:`compatkit.config.validate`). The resolved configuration is written into the run
directory, so every result carries the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_CLASSES",
    "MAX_EPOCHS",
    "MAX_FEAT_DIM",
    "THREADS_PER_HARDWARE_THREAD",
    "DataSource",
    "EvalConfig",
    "LocalConfig",
    "ModelConfig",
    "OptimConfig",
    "ProviderConfig",
    "RunConfig",
    "max_threads",
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
    """SGD with momentum and a cosine schedule (docs/method.md §4)."""

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
    """Open-set retrieval evaluation on images no model trained on (docs/method.md §4)."""

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
    plugins: list[str] = field(default_factory=list)
    """Python modules to import before the config is checked, each registering methods of its
    own (importable names, e.g. ``my_lab.methods``); installed packages can instead declare
    theirs in the ``compatkit.methods`` entry-point group (docs/adding-a-method.md)."""
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
    """Where trained providers are cached; None = compatkit's cache, shared by every run
    (``$COMPATKIT_CACHE/providers``, else ``~/.cache/compatkit/providers``)."""
    num_workers_threads: int = 0
    """CPU threads for torch (0 = torch's default; at most :func:`max_threads`)."""


# --------------------------------------------------------------------------- bounds

MAX_CLASSES = 8192
"""Largest K accepted. The fixed heads hold a K x (K-1) matrix, built in float64: K = 8,192 is
512 MiB while building and 256 MiB in every checkpoint, 8 times the paper's K = 1,024; a typo
such as K = 10**6 would ask for terabytes and fail deep inside torch."""
MAX_FEAT_DIM = 16384
"""Largest feature dimension accepted: 2 x MAX_CLASSES, room for an ETF head (d >= K-1) at the
largest K, while a learnable K x d head stays within 512 MiB of float32."""
THREADS_PER_HARDWARE_THREAD = 4
"""How far num_workers_threads may oversubscribe the machine (see :func:`max_threads`)."""
MAX_EPOCHS = 10_000
"""Largest train.epochs and providers[i].epochs accepted: 140 times the paper's 70 and 10 times
the longest schedules of the field (about 1,000 epochs). Nothing breaks beyond it, but such a
run never ends (1e9 epochs of a single 128-image step at 1,000 steps/s is 31 years): the value
is a typo, refused before anything is written."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Every integer of a config must fit in int64: seeds and counts reach torch, which stores
them in 64 bits and fails with an overflow deep in a run otherwise."""


def max_threads() -> int:
    """Largest num_workers_threads accepted on this machine: its hardware threads times
    THREADS_PER_HARDWARE_THREAD. torch's OpenMP pool gains nothing past the hardware threads
    and only spins beyond them (1,000 threads on a 2-core machine trained each task of a small
    test config 15 to 21 times slower than 1 thread did), and it aborts the whole process,
    with no Python error, where the system cannot create the threads asked for."""
    return THREADS_PER_HARDWARE_THREAD * (os.cpu_count() or 1)


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain dicts and lists (what config.yaml holds)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
