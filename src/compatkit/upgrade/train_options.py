"""Everything ``compatkit train`` can be told: :class:`TrainOptions` (flags, ``--config``
YAML, ``--set``), validated before any data is read."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..methods import METHODS, build_method, load_all

__all__ = ["CE_METHOD", "HEAD_KINDS", "LOADINGS", "TrainOptions", "budget_bytes", "option_fields"]

CE_METHOD = {"simplex": "cores", "learnable": "er", "etf": "etf"}
"""Head kind -> the registered method that is plain cross-entropy through it: how a first
model is trained (the compatibility terms of the other methods need an old model)."""

HEAD_KINDS = tuple(CE_METHOD)

LOADINGS = ("auto", "memory", "stream")
"""How ``compatkit train`` reads image files (``--in-memory``, ``--stream``; auto decides)."""


@dataclass
class TrainOptions:
    """Everything ``compatkit train`` can be told (flags, ``--config`` YAML or ``--set``).

    None means "decide from the data or the old model", as each field says.
    """

    method: str | None = None
    """Registered method; None: ``hoc`` for a successor, plain cross-entropy for a first model."""
    head: str | None = None
    """simplex, etf or learnable; None: the method's head (simplex for a first model)."""
    backbone: str | None = None
    """Registry name or timm:/tv: name; None: the old model's backbone, else smallcnn."""
    num_classes: int | None = None
    """K, the vertices of a fixed head; None: the old model's K, else max(16, 2 x classes)
    (room to double the classes without a new lineage). Fixed for the life of a gallery."""
    image_size: int | None = None
    """Square side in pixels; None: the old model's size, else the data's own (uniform) size."""
    init: str | None = None
    """Successor start: ``old`` (the old weights) or ``scratch``; None: ``old`` after a
    compatkit model, ``scratch`` after a foreign one (its weights fit no compatkit backbone)."""
    pretrained: bool = False
    """Start a ``timm:``/``tv:`` backbone from the library's pretrained weights (network)."""
    weights: str | None = None
    """Start the backbone from a local file (safetensors or a state dict)."""
    anchor: str | None = None
    """Data whose OLD features the successor is trained to keep (:mod:`.anchor`)."""
    anchor_weight: float = 1.0
    """Weight of the anchor term next to the method's loss."""
    anchor_term: str = "fd"
    """``fd`` (1 - cos to OLD's feature) or ``method`` (the method's old-model term)."""
    workers: int = 0
    """Processes decoding image files."""
    strict: bool = False
    """Stop at an unreadable image instead of skipping it."""
    loading: str = "auto"
    """How image files are read: ``memory`` (decoded once, then batches gathered in memory),
    ``stream`` (decoded every epoch by the workers), or ``auto``: in memory when the decoded
    set fits the budget (:mod:`compatkit.upgrade.train_data`), streamed otherwise."""
    memory_budget: int | str | None = None
    """Bytes the decoded images may take in memory before ``auto`` streams them: a number,
    or one with a unit (``512M``, ``2G``, ``1.5GiB``; powers of 1024). None: a quarter of
    the memory available (:data:`compatkit.data.sources.IN_MEMORY_SHARE`)."""
    epochs: int = 10
    """Passes over the data."""
    batch_size: int = 128
    """Images per step."""
    lr: float | None = None
    """Initial learning rate; None: 0.05 from scratch, 0.001 (the paper's fine-tuning rate)
    when starting from the old model."""
    min_lr: float | None = None
    """Cosine-decay floor; None: lr / 100."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    """L2 penalty on conv/linear weights only (none on norms and biases)."""
    pad: int | None = None
    """Random-crop padding in pixels; None: an eighth of the image side (4 px at 32 px)."""
    flip: bool = True
    """Random horizontal flips (turn off for data where left and right differ, e.g. text)."""
    freeze_bn: bool | None = None
    """Keep BatchNorm statistics fixed; None: on when a successor starts from the old weights
    (so the features of classes absent from the data do not move with the statistics)."""
    ce_rows: str = "seen"
    """Rows of a fixed head in the cross-entropy's softmax: ``seen``, only the vertices of the
    classes this model has, or ``all`` K vertices (the paper's Eq. 2; see the module notes)."""
    val_fraction: float = 0.0
    """Share of each class held out to report validation accuracy after every epoch."""
    seed: int = 0
    """Seed of the weights, the batch order, the augmentation and the validation split."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N."""
    precision: str = "auto"
    """auto (bf16 on CUDA when supported, else fp16; fp32 on CPU), fp32, bf16, fp16."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-method hyperparameters, e.g. {hoc: {lam: 0.3}} (``--set hoc.lam=0.3``)."""

    def validate(self) -> None:
        """Static checks (no data needed); each failure names the option."""
        load_all()
        if self.method is not None and self.method not in METHODS:
            raise ConfigError(
                f"method: unknown method {self.method!r}; choose from {sorted(METHODS)}"
            )
        if self.head is not None and self.head not in HEAD_KINDS:
            raise ConfigError(f"head must be one of {list(HEAD_KINDS)}, got {self.head!r}")
        if self.method is not None and self.head is not None:
            if METHODS[self.method].head != self.head:
                raise ConfigError(
                    f"head: method {self.method!r} trains a {METHODS[self.method].head} head, "
                    f"not {self.head}"
                )
        for m, opts in self.method_options.items():
            if m not in METHODS:
                raise ConfigError(
                    f"method_options.{m}: unknown method; choose from {sorted(METHODS)}"
                )
            try:
                build_method(m, opts)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"method_options.{m}: {e}") from None
        if self.ce_rows not in ("all", "seen"):
            raise ConfigError(f"ce_rows must be 'all' or 'seen', got {self.ce_rows!r}")
        if self.loading not in LOADINGS:
            raise ConfigError(f"loading must be one of {list(LOADINGS)}, got {self.loading!r}")
        budget_bytes(self.memory_budget)
        if self.anchor_term not in ("method", "fd"):
            raise ConfigError(f"anchor_term must be 'method' or 'fd', got {self.anchor_term!r}")
        if self.init not in (None, "old", "scratch"):
            raise ConfigError(f"init must be 'old' or 'scratch', got {self.init!r}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"num_classes (K) must be >= 2, got {self.num_classes}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"image_size must be >= 1 pixel, got {self.image_size}")
        for key in ("epochs", "lr", "batch_size"):
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{key} must be a finite number > 0, got {v}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (BatchNorm), got {self.batch_size}")
        for key in ("min_lr", "momentum", "weight_decay", "pad", "threads", "workers"):
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{key} must be a finite number >= 0, got {v}")
        if self.lr is not None and self.min_lr is not None and self.min_lr > self.lr:
            raise ConfigError(f"min_lr={self.min_lr} exceeds lr={self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "options") -> TrainOptions:
        """Build from a mapping (a YAML file's content), refusing unknown keys and bad types."""
        from ..config import build

        if not isinstance(d, dict):
            raise ConfigError(f"{source} must hold a mapping of option: value")
        try:
            opts = build(cls, d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        return opts

    def to_dict(self) -> dict:
        return asdict(self)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def budget_bytes(value: int | str | None) -> int | None:
    """``memory_budget`` in bytes (None stays None); a bad value is a ``ConfigError``."""
    if value is None:
        return None
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    try:
        number = float(text[: len(text) - len(unit)])
    except ValueError:
        number = -1.0
    if not (math.isfinite(number) and number >= 0):
        raise ConfigError(
            f"memory_budget must be a size in bytes such as 500000000, 512M or 2G, got {value!r}"
        )
    return int(number * _UNITS[unit])


def option_fields() -> list[str]:
    """Names of the options a config file or ``--set`` may give."""
    return [f.name for f in fields(TrainOptions)]
