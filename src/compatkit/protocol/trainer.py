"""One task's training loop: uint8 batches on the device, batch augmentation, AMP, one screen.

The loop knows nothing about methods: it asks the method for its loss
(``Method.loss``) and, when the method needs it, runs the frozen old model on
the same augmented batch. Optimisation follows docs/method.md §4: SGD with
momentum, weight decay on conv/linear weights (``train.weight_decay_on``),
cosine decay to a floor updated every step or, as released, once per epoch
(``train.lr_update``), optional linear warm-up; batches from the configured
sampler (``train.sampler``), gathered from a set in memory or read from files
(:mod:`compatkit.data.sources`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import save_checkpoint
from ..config import OptimConfig
from ..data import ImageSet, augment, steps_per_epoch
from ..data.sources import BatchSource, as_source
from ..errors import ConfigError
from ..methods import Method, StepInputs, TaskContext
from ..model import CompatModel, ModelOutput
from ..runtime.device import Runtime, autocast
from ..runtime.distributed import Dist, gather_rows, shard_slice
from ..runtime.log import RunLog
from ..runtime.steps import observe_steps, step_observers

__all__ = [
    "FINITE_CHECK_EVERY",
    "TaskResult",
    "TrainingDiverged",
    "fit",
    "make_optimizer",
    "observe_steps",
    "save_on_main",
    "task_seed",
    "train_task",
]

FINITE_CHECK_EVERY = 25
"""Steps between two looks at the divergence flag. The flag itself is updated on the device at
every step without a synchronisation; reading it costs one (about what one log line costs), so
a diverged run stops at most this many steps late, with nothing saved."""


class TrainingDiverged(ConfigError):
    """The training loss became NaN or infinite: the settings (learning rate, loss weights,
    precision) made the run diverge. Nothing of the failed task is saved."""


def make_optimizer(
    model: nn.Module, lr: float, momentum: float, wd: float, decay_all: bool = False
) -> torch.optim.SGD:
    """SGD; weight decay on weights of >= 2 dimensions only (none on norms and biases), or on
    every trained parameter with ``decay_all`` (the released notebooks)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if (decay_all or p.ndim >= 2) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def cosine_lr(step: int, total: int, lr: float, min_lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, t)))


@dataclass
class TaskResult:
    losses: list[float]
    """Mean loss per epoch."""
    parts: list[dict[str, float]]
    """Mean of each loss part per epoch (e.g. ce, hoc)."""
    images_per_s: float
    seconds: float


def train_task(
    model: CompatModel,
    method: Method,
    ctx: TaskContext,
    data: ImageSet | BatchSource,
    memory: ImageSet | None,
    opt_cfg: OptimConfig,
    rt: Runtime,
    generator: torch.Generator,
    *,
    space: str = "local",
    epochs: int | None = None,
    lr: float | None = None,
    on_step: Callable[[dict], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    ddp_model: nn.Module | None = None,
) -> TaskResult:
    """Train ``model`` on one task's ``data`` (+ ``memory``) with ``method``'s loss.

    ``data``: an :class:`ImageSet` or a batch source (images read from files) giving uint8
    batches on the training device; ``memory`` must be there already. ``rt`` gives
    the input scaling, the autocast precision and the process group. ``ddp_model`` is the
    DistributedDataParallel wrapper of ``model`` when training on several processes: every
    rank draws and augments the same global batch, keeps its own shard for the forward pass,
    and the outputs are gathered so that the loss is the global batch's
    (:mod:`compatkit.runtime.distributed`). ``on_step`` receives, after every step, the
    epoch, step, total steps, loss and its parts (tensors), images seen and learning rate;
    so does every observer registered with :func:`~compatkit.runtime.steps.observe_steps`.
    ``on_epoch`` receives the epoch and its mean loss after each epoch.
    """
    d = rt.dist
    normalize, precision = rt.normalize, rt.precision
    device = ctx.device
    epochs = epochs or opt_cfg.epochs
    base_lr = lr or opt_cfg.lr
    net = ddp_model or model
    observers = (*((on_step,) if on_step is not None else ()), *step_observers())
    old = ctx.old_model
    method.begin_task(ctx)
    decay_all = opt_cfg.weight_decay_on == "all"
    opt = make_optimizer(model, base_lr, opt_cfg.momentum, opt_cfg.weight_decay, decay_all)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    bs, sampler = opt_cfg.batch_size, opt_cfg.sampler
    n_mem = len(memory) if memory is not None else 0
    source = as_source(data)
    per_epoch = steps_per_epoch(len(source), n_mem, bs, sampler)
    total = epochs * per_epoch
    # Per epoch: the released CosineAnnealingLR(T_max=epochs, eta_min), stepped after each epoch.
    by_epoch = opt_cfg.lr_update == "epoch"
    span = epochs if by_epoch else total
    warm = opt_cfg.warmup_epochs * (1 if by_epoch else per_epoch)
    step, seen, t0 = 0, 0, time.perf_counter()
    losses, parts_hist = [], []
    # Divergence watch, on the device (no per-step host sync): the step at which the loss
    # first became non-finite (-1: never) and the last finite loss before it.
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    last_finite = torch.full((), float("nan"), device=device)
    model.train()
    if opt_cfg.freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    for epoch in range(epochs):
        ep_loss = torch.zeros((), device=device)
        ep_parts: dict[str, torch.Tensor] = {}
        n_batches = 0
        for images, labels in source.batches(memory, bs, generator, sampler):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(
                    epoch if by_epoch else step, span, base_lr, opt_cfg.min_lr, warm
                )
            x = normalize(augment(images, opt_cfg.pad, opt_cfg.flip, generator))
            targets = model.targets(labels, space)
            if d.enabled:
                x = x[shard_slice(len(labels), d)]
            with autocast(device, precision):
                out = net(x)
                old_out = None
                if old is not None:
                    with torch.no_grad():
                        old_out = old(x)
            if d.enabled:  # the global batch's outputs, gradients flowing to each own shard
                out = ModelOutput(*(gather_rows(t, d, autograd=True) for t in out))
                if old_out is not None:
                    old_out = ModelOutput(*(gather_rows(t, d) for t in old_out))
            # Losses run outside autocast: normalisations, cosine matrices and log-sum-exps
            # stay in fp32 whatever the forward pass used.
            loss, parts = method.loss(StepInputs(out, old_out, labels, targets))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            ep_loss += loss.detach()
            for k, v in parts.items():
                ep_parts[k] = ep_parts.get(k, 0) + v
            n_batches += 1
            step += 1
            seen += len(labels)
            _watch(loss.detach(), step, bad_step, last_finite)
            if step % FINITE_CHECK_EVERY == 0:
                _stop_if_diverged(bad_step, last_finite, total)
            if observers:
                state = {
                    "epoch": epoch,
                    "step": step,
                    "total": total,
                    "loss": loss,
                    "parts": parts,
                    "seen": seen,
                    "lr": opt.param_groups[0]["lr"],
                }
                for observe in observers:
                    observe(state)
        _stop_if_diverged(bad_step, last_finite, total)
        losses.append(float(ep_loss) / max(1, n_batches))
        parts_hist.append({k: float(v) / max(1, n_batches) for k, v in ep_parts.items()})
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    # The last update can turn the weights non-finite after a finite loss: such a model must
    # not be saved as the task's result (one host sync per task).
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise TrainingDiverged(
            f"the weights became non-finite in the last update (step {step}/{total}, after a "
            f"loss of {losses[-1]:.4g}). The settings made training diverge: lower the "
            "learning rate (train.lr, or the provider's lr)"
        )
    dt = time.perf_counter() - t0
    model.eval()
    return TaskResult(losses, parts_hist, seen / max(dt, 1e-9), dt)


def _watch(loss: torch.Tensor, step: int, bad_step: torch.Tensor, last: torch.Tensor) -> None:
    """Record, in place and on the device, the first non-finite step and the last finite loss."""
    ok = torch.isfinite(loss.float())
    fresh = bad_step < 0
    last.copy_(torch.where(ok & fresh, loss.float(), last))
    bad_step.copy_(torch.where(~ok & fresh, torch.full_like(bad_step, step), bad_step))


def _stop_if_diverged(bad_step: torch.Tensor, last: torch.Tensor, total: int) -> None:
    s = int(bad_step)  # the one host synchronisation of the watch
    if s < 0:
        return
    before = float(last)
    was = (
        f"the last finite loss was {before:.4g} (step {s - 1})"
        if s > 1
        else "it was not finite from the first step"
    )
    raise TrainingDiverged(
        f"the training loss became non-finite at step {s}/{total}; {was}. The settings made "
        "training diverge: lower the learning rate (train.lr, or the provider's lr) or change "
        "the loss weights (method_options)"
    )


def task_seed(seed: int, task: int, salt: int = 0) -> int:
    """A seed per (run seed, task): resuming at task t replays exactly what t would have done."""
    return (seed * 1_000_003 + task * 7919 + salt) % (2**63 - 1)


def save_on_main(dist: Dist, path: Path, model: CompatModel, extra: dict) -> None:
    """Rank 0 writes the checkpoint; every rank waits until the file is there."""
    if dist.main:
        save_checkpoint(path, model, extra=extra)
    dist.barrier()


def fit(
    model: CompatModel,
    method: Method,
    ctx: TaskContext,
    data: ImageSet | BatchSource,
    memory: ImageSet | None,
    opt: OptimConfig,
    rt: Runtime,
    log: RunLog,
    label: str,
    seed: int,
    space: str = "local",
) -> TaskResult:
    """:func:`train_task` as a run does it: seeded, wrapped in DDP under ``torchrun``, with a
    progress bar in ``log``; a divergence is reported with ``label`` in front."""
    gen = torch.Generator(device=rt.device).manual_seed(seed)
    n_mem = len(memory) if memory is not None else 0
    total = opt.epochs * steps_per_epoch(len(data), n_mem, opt.batch_size, opt.sampler)
    log.start(label, total)
    t0 = time.perf_counter()

    def on_step(s: dict) -> None:
        if s["step"] % 10 == 0 or s["step"] == s["total"]:
            rate = s["seen"] / max(1e-9, time.perf_counter() - t0)
            log.advance(
                f"ep {s['epoch'] + 1} loss {float(s['loss'].detach()):.3f} {rate:.0f} img/s"
            )
        else:
            log.advance()

    try:
        ddp = None
        if rt.dist.enabled:
            if rt.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            ddp = DistributedDataParallel(model, device_ids=ids)
        return train_task(
            model, method, ctx, data, memory, opt, rt, gen,
            space=space, on_step=on_step, ddp_model=ddp,
        )  # fmt: skip
    except TrainingDiverged as e:
        raise TrainingDiverged(f"{label}: {e}") from None
    finally:
        log.finish()
