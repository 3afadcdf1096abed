"""``compatkit train``: a model on one's own images, or its successor against a frozen old model.

A first model (no ``old``) is trained with cross-entropy through its head (the
d-Simplex fixed classifier by default; Biondi et al., CVPR 2024, Sec. 3):
every class of the data gets a vertex, written from the bottom (class id c on
vertex K-1-c), and the class names go into the checkpoint's contract.

A successor (``old`` given) is trained with a registered method's loss against
the frozen old model (d-Simplex-HOC, Eq. 3, by default). What keeps its
features comparable with the old gallery is the class-to-vertex contract, so
it is built by *name*:

- a class the old model knows keeps its id, hence its vertex, whatever
  position the folder order gives it now;
- a new class gets the next free id (the next free vertex);
- K cannot change (the vertices would move): when the classes do not fit,
  training is refused before anything runs, with the number needed.

The d-Simplex feature dimension is K-1 whatever the backbone, so a successor
may also start from scratch (``init="scratch"``) or use another backbone.
A learnable-head method (ER, BCT, LwF, FD, CVS) may follow a d-Simplex model
and vice versa: the backbone and junction start from the old ones, and a new
learnable head starts, for each class the old model knows, from the old head's
row of that class. Two fixed heads of different kinds (d-Simplex, ETF) never
share a gallery, so that change is refused.

One deviation from the paper, measured: by default the cross-entropy's softmax
runs over the vertices of the classes the model has (``ce_rows="seen"``), not
over all K. With all K vertices in the softmax, every feature gains a growing
component along the centroid of the used vertices (it lowers every unused
vertex's logit at once), so all features crowd into a narrow cone: on
Fashion-MNIST (smallcnn, K=16, 5 classes) two images of different classes had
a mean cosine of 0.97, a successor that moved its features by only 10 degrees
lost 27 points of recall@1 against the old gallery, and HOC's contrastive term,
which needs old features of different classes to differ, stayed near its
uniform value (4.05 against 0.97 with ``seen``). ``ce_rows="all"`` restores
Eq. 2 as written. See docs/upgrade.md for the numbers.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..backbones import load_backbone_weights
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import OptimConfig
from ..data import Normalize, steps_per_epoch
from ..data.preprocess import Preprocess
from ..data.sources import STATS_IMAGES, BatchSource, MemoryBudget, Streamed
from ..errors import CheckpointError, ConfigError
from ..interop.foreign import foreign_format, load_foreign
from ..methods import TaskContext, build_method
from ..model import CompatModel, ModelSpec
from ..protocol.evaluate import batches_accuracy
from ..protocol.trainer import train_task
from ..runtime.device import Runtime, resolve_precision
from ..runtime.log import RunLog
from .anchor import AnchoredMethod, AnchorOptions
from .data import given_preprocess, relabel
from .foreign_old import ForeignOld, class_means, foreign_successor, named_model
from .successor import build_successor, check_room, method_for, plan_classes
from .train_data import (
    open_anchors,
    open_training_data,
    stratified_split,
    training_stats,
)
from .train_options import CE_METHOD, TrainOptions, budget_bytes

__all__ = [
    "CE_METHOD",
    "TrainOptions",
    "TrainResult",
    "plan_classes",
    "stratified_split",
    "train_model",
]


@dataclass
class TrainResult:
    path: Path
    model: CompatModel
    extra: dict
    """The metadata written into the checkpoint (see :func:`train_model`)."""


def _unreadable(data: BatchSource | None) -> int:
    """Items of ``data`` found unreadable while training (only a streamed set has any: an
    in-memory one left them out when it was read)."""
    return data.unreadable() if isinstance(data, Streamed) else 0


def _reset_modes(model: nn.Module, freeze_bn: bool) -> Callable[[], None]:
    """A function that puts ``model`` back in training mode as ``train_task`` left it."""

    def restore() -> None:
        model.train()
        if freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    return restore


# ----------------------------------------------------------------------------- training


def train_model(
    data_spec: str,
    out: str | Path,
    opts: TrainOptions | None = None,
    old: str | Path | None = None,
    log: RunLog | None = None,
) -> TrainResult:
    """Train a model on ``data_spec`` (a folder or a dataset name) and save it to ``out``.

    With ``old``: the successor of that checkpoint (see the module docstring).
    The checkpoint's ``extra`` holds ``normalize`` {mean, std}, ``input_size``
    [C, H, W], ``class_names`` {id: name}, the method and its options, the old
    model's fingerprint and path, the data spec and counts, the resolved
    options, per-epoch losses, validation accuracy and timing.
    """
    from ..runtime.device import resolve_device

    opts = opts or TrainOptions()
    opts.validate()
    log = log or RunLog(None)
    t_start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    try:
        device = resolve_device(opts.device)
        precision = resolve_precision(opts.precision, device)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"device/precision: {e}") from None

    old_model, old_meta, foreign = (None, None, None)
    if old is not None and foreign_format(old) is not None:
        foreign = load_foreign(old)
        if opts.init == "old":
            raise ConfigError(
                f"--init old: {old} is a {foreign.format} model whose weights fit no compatkit "
                "backbone; its successor starts from scratch (or --weights/--pretrained)"
            )
        old_meta = {"sha256": foreign.sha256, "extra": {}}
    elif old is not None:
        old_model, old_meta = load_checkpoint(old, map_location="cpu")
        if not old_model.class_map.names or set(old_model.class_map.names) != set(
            old_model.class_map.local
        ):
            raise CheckpointError(
                f"checkpoint {old}: its classes have no names (it was not written by "
                "`compatkit train`), so the classes of the new data cannot be matched to them"
            )
        if opts.num_classes is not None and old_model.spec.head != "learnable":
            if opts.num_classes != old_model.spec.num_classes:
                raise ConfigError(
                    f"num_classes: the old model has K={old_model.spec.num_classes}; a successor "
                    f"keeps K (asked for {opts.num_classes})"
                )
    method_name, head = method_for(opts, old is not None)

    # Data: the old model's input size and channels unless told otherwise.
    old_extra = old_meta["extra"] if old_meta else {}
    size = opts.image_size
    channels = None
    if old_model is not None:
        channels = old_model.spec.in_channels
        if size is None and isinstance(old_extra.get("input_size"), list):
            size = int(old_extra["input_size"][1])
    backbone = opts.backbone or (old_model.spec.backbone if old_model else "smallcnn")
    pre = given_preprocess(opts, old_extra, foreign, backbone, channels)
    given = budget_bytes(opts.memory_budget)
    budget = MemoryBudget.of(device) if given is None else MemoryBudget(given)
    tdata = open_training_data(
        data_spec, size, channels, pre, opts.loading, budget, opts.workers, opts.strict, log.info
    )
    log.info(f"{data_spec}: {len(tdata.source)} images, {tdata.reason}")
    ids = plan_classes(tdata.source.classes, old_model.class_map.names if old_model else None)
    names = [ids.get(i, f"<unused {i}>") for i in range(max(ids) + 1)]
    data = relabel(tdata.source, names)
    c_in, height, width = data.input_size
    torch.manual_seed(opts.seed)
    init = opts.init or ("old" if old_model is not None else "scratch")

    if foreign is not None:
        means = class_means(foreign, data, pre.normalizer())
        old_model = ForeignOld(foreign, ids, means)
        model = foreign_successor(foreign, head, backbone, ids, means)
        mean, std = list(pre.mean), list(pre.std)
        method = build_method(method_name, opts.method_options.get(method_name))
        frozen = old_model.to(device)
    elif old_model is None:
        if opts.init is not None:
            raise ConfigError("init: --init applies to a successor (pass --old)")
        k = opts.num_classes or max(16, 2 * len(ids))
        if head != "learnable":
            check_room(k, ids, set(), data_spec)
        spec = ModelSpec(backbone, c_in, k - 1, head, k if head != "learnable" else len(ids))
        model = named_model(spec, ids)
        if pre is None and tdata.streamed:
            log.info(f"{data_spec}: channel statistics of {min(len(data), STATS_IMAGES)} images")
        mean, std = (pre.mean, pre.std) if pre is not None else training_stats(tdata, opts.seed)
        method = build_method(method_name)
        frozen = None
    else:
        if head != "learnable":
            check_room(old_model.spec.num_classes, ids, set(old_model.class_map.local), data_spec)
        try:
            model = build_successor(old_model, head, backbone, ids, init)
        except (ImportError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"model: {e}") from None
        norm = old_extra.get("normalize") or {}
        if not norm:
            raise CheckpointError(f"checkpoint {old}: no input normalisation in its metadata")
        mean, std = list(norm["mean"]), list(norm["std"])
        method = build_method(method_name, opts.method_options.get(method_name))
        frozen = None
        if method.needs_old or opts.anchor:
            frozen = copy.deepcopy(old_model).to(device).eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
    if init == "scratch":
        load_backbone_weights(model.backbone, backbone, c_in, opts.pretrained, opts.weights)
    elif opts.pretrained or opts.weights:
        raise ConfigError("--pretrained/--weights: the successor starts from the old weights")
    pre = pre or Preprocess.square(c_in, height, mean, std)
    if height != width:
        pre = Preprocess.from_dict({"input_size": [c_in, height, width], "mean": mean, "std": std})

    gen = torch.Generator().manual_seed(opts.seed)
    train_set, val_set = stratified_split(data, opts.val_fraction, gen)
    side = height
    lr = opts.lr or (0.001 if (old_model is not None and init == "old") else 0.05)
    freeze_bn = (
        opts.freeze_bn if opts.freeze_bn is not None else (old_model is not None and init == "old")
    )
    optim = OptimConfig(
        epochs=int(opts.epochs),
        batch_size=int(opts.batch_size),
        lr=lr,
        min_lr=opts.min_lr if opts.min_lr is not None else lr / 100,
        momentum=opts.momentum,
        weight_decay=opts.weight_decay,
        pad=int(opts.pad) if opts.pad is not None else max(1, side // 8),
        flip=opts.flip,
        freeze_bn=freeze_bn,
    )
    normalize = Normalize(mean, std)
    rt = Runtime(device, precision, normalize)
    if opts.anchor:
        if frozen is None:
            raise ConfigError("--anchor: anchors keep an old model's features; pass --old")
        anchors, why = open_anchors(
            opts.anchor, pre, opts.loading, budget, opts.workers, opts.strict, log.info
        )
        a_opts = AnchorOptions(
            opts.anchor_weight, optim.batch_size, optim.pad, optim.flip, term=opts.anchor_term
        )
        method = AnchoredMethod(method, anchors, a_opts, opts.seed + 1)
        log.info(
            f"anchors: {len(anchors)} images of {opts.anchor}, {why}, weight {opts.anchor_weight:g}"
        )

    model.to(device)
    present = torch.unique(train_set.labels).tolist()
    ctx = TaskContext(
        model=model,
        old_model=frozen,
        task_id=1 if old_model is not None else 0,
        new_classes=present,
        old_classes=sorted(frozen.class_map.local) if frozen is not None else [],
        device=device,
        normalize=normalize,
    )
    steps = steps_per_epoch(len(train_set), 0, optim.batch_size)
    total = steps * optim.epochs
    what = f"{'successor' if old_model else 'model'} ({method_name}, {len(train_set)} images)"
    log.info(
        f"train {what}: {len(ids)} classes on a {head} head (K={model.spec.num_classes}), "
        f"{backbone}, {c_in}x{height}x{width}, {optim.epochs} epochs x "
        f"{steps} steps, lr {lr:g}, device {device}"
    )
    val_seen = sorted(ids)
    val_hist: list[float | None] = []
    restore = _reset_modes(model, freeze_bn)
    t0 = time.perf_counter()
    val_dev = val_set.to(device) if val_set is not None else None

    def on_step(s: dict) -> None:
        rate = s["seen"] / max(1e-9, time.perf_counter() - t0)
        log.advance(f"ep {s['epoch'] + 1} loss {float(s['loss'].detach()):.3f} {rate:.0f} img/s")

    def on_epoch(epoch: int, loss: float) -> None:
        msg = f"epoch {epoch + 1}/{optim.epochs}: loss {loss:.4f}"
        if val_dev is not None:
            acc = batches_accuracy(model, val_dev.ordered(optim.batch_size), val_seen, rt)
            restore()
            val_hist.append(acc)
            msg += (
                ", no validation image readable"
                if acc is None
                else f", validation accuracy {acc:.2f} %"
            )
        log.info(msg)

    hook = None
    if opts.ce_rows == "seen" and model.head.fixed:
        keep = torch.zeros(model.head.num_rows, dtype=torch.bool, device=device)
        keep[sorted(model.class_map.local.values())] = True

        def seen_rows_only(_mod: nn.Module, _inp: Any, logits: torch.Tensor) -> torch.Tensor:
            return logits.masked_fill(~keep, float("-inf"))

        hook = model.head.register_forward_hook(seen_rows_only)
    log.start(f"train {what}", total)
    try:
        res = train_task(
            model,
            method,
            ctx,
            train_set.to(device),
            None,
            optim,
            rt,
            torch.Generator(device=device).manual_seed(opts.seed),
            on_step=on_step,
            on_epoch=on_epoch,
        )
    finally:
        log.finish()
        if hook is not None:
            hook.remove()
    for loss in res.losses:
        if not math.isfinite(loss):
            raise ConfigError(f"training diverged (loss {loss}); lower --lr (was {lr:g})")
    model.eval()
    resolved = {
        **opts.to_dict(),
        "method": method_name,
        "head": head,
        "backbone": backbone,
        "num_classes": model.spec.num_classes,
        "image_size": height,
        "init": init if old is not None else None,
        "lr": lr,
        "min_lr": optim.min_lr,
        "pad": optim.pad,
        "freeze_bn": freeze_bn,
    }
    extra = {
        "role": "upgrade",
        "method": method_name,
        "method_options": asdict(method.cfg) if hasattr(method.cfg, "__dataclass_fields__") else {},
        "old": {
            "fingerprint": old_meta["sha256"],
            "path": str(old),
            "format": foreign.format if foreign else "compatkit-checkpoint",
        }
        if old_meta
        else None,
        "preprocess": pre.to_dict(),
        "anchor": {"data": opts.anchor, "weight": opts.anchor_weight, "term": opts.anchor_term}
        if opts.anchor
        else None,
        "data": {
            "spec": data_spec,
            "images": len(train_set) - _unreadable(train_set),
            "held_out": len(val_set or []) - _unreadable(val_set),
            "loading": "stream" if tdata.streamed else "memory",
            "skipped": tdata.report.skipped,
        },
        "class_names": {str(k): v for k, v in sorted(ids.items())},
        "classes_trained": [ids[c] for c in present],
        "normalize": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "input_size": [c_in, height, width],
        "options": resolved,
        "losses": res.losses,
        "loss_parts": res.parts,
        "val_accuracy": val_hist,
        "seed": opts.seed,
        "images_per_s": res.images_per_s,
        "seconds": round(time.perf_counter() - t_start, 2),
        "compatkit": __version__,
    }
    save_checkpoint(out, model.cpu(), extra=extra)
    return TrainResult(Path(out), model, extra)
