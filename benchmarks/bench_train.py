"""compatkit's training path against a per-sample PIL + DataLoader pipeline like the reference's.

Both train the same model (a ``CompatModel`` with a d-Simplex head), on the
same device, with the same batch size, augmentation (random crop of the
zero-padded image, horizontal flip), normalisation, loss (cross-entropy),
optimiser (SGD with momentum, cosine schedule) and number of steps. They
differ only in how a batch is made:

- compatkit: the dataset is one uint8 tensor on the device;
  ``half_and_half_batches`` gathers a batch with one index,
  ``augment`` crops and flips the whole batch with two gathers, and the
  normalisation is one multiply-add (``compatkit.protocol.trainer.train_task``, the
  runner's own loop);
- per sample, as in the reference code: a ``torch.utils.data.Dataset`` builds
  one PIL image per sample, pads and crops it, maybe flips it, turns it into a
  float tensor and normalises it, and a ``DataLoader`` (shuffle, batch 128)
  collates the samples (``num_workers`` 0, and 2 when asked). The transforms
  are written with PIL and numpy, equivalent to torchvision's ``RandomCrop(size,
  padding) + RandomHorizontalFlip + ToTensor + Normalize`` (``--pipeline
  torchvision`` uses those when torchvision is installed).

Where data handling dominates (smallcnn at 1x28x28 on a CPU) the difference is
large; where the model dominates (the CIFAR ResNet-18 at 3x32x32 on a CPU, a
few images per second) the ratio is close to 1, as it should be: then the only
gain is the CPU time the data pipeline leaves to the model. One epoch of each
path per repetition, interleaved; medians. ``gpu_check.py`` reuses this code
on a GPU.

    python benchmarks/bench_train.py [--quick] [--device cuda] [--workers 0 2]
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from PIL import Image, ImageOps

from _common import Timer, base_parser, finish, median, natural_shape, setup, simplex_model
from _results import md_table
from compatkit.config import OptimConfig
from compatkit.data import DATASET_STATS, augment, half_and_half_batches, to_float
from compatkit.methods import StepInputs, TaskContext, build_method
from compatkit.protocol.trainer import cosine_lr, make_optimizer, train_task
from compatkit.runtime.device import Precision, Runtime, autocast

NAME = "bench_train"
TITLE = "bench_train: compatkit's training path vs a per-sample PIL + DataLoader pipeline"

__all__ = ["PerSampleDataset", "TrainSetup", "compare", "make_setup"]


def _stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Fashion-MNIST's statistics for one channel, CIFAR-10's for three."""
    return DATASET_STATS["fashion-mnist" if channels == 1 else "cifar10"]


# ----------------------------------------------------------------------------- per sample


class PerSampleDataset(torch.utils.data.Dataset):
    """One PIL image per ``__getitem__``, transformed alone: the reference's data path.

    ``images``: uint8 ``(N, C, H, W)`` numpy array in host memory (as a torchvision
    dataset keeps CIFAR); ``labels``: ``(N,)``. Random draws use Python's ``random``,
    which the ``DataLoader`` seeds in each worker.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        pad: int,
        flip: bool,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        pipeline: str = "pil",
    ) -> None:
        self.images, self.labels = images, labels
        self.pad, self.flip = pad, flip
        c = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(c, 1, 1)
        self.tv = None
        if pipeline == "torchvision":
            from torchvision import transforms as T

            h = images.shape[2]
            self.tv = T.Compose(
                [
                    T.RandomCrop(h, padding=pad),
                    T.RandomHorizontalFlip(0.5 if flip else 0.0),
                    T.ToTensor(),
                    T.Normalize(mean, std),
                ]
            )
        elif pipeline != "pil":
            raise ValueError(f"pipeline must be 'pil' or 'torchvision', got {pipeline!r}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = self.images[i]
        c, h, w = arr.shape
        img = Image.fromarray(arr[0] if c == 1 else arr.transpose(1, 2, 0))
        if self.tv is not None:
            return self.tv(img), int(self.labels[i])
        if self.pad:  # RandomCrop(size, padding): zero-pad, then crop a window at random
            img = ImageOps.expand(img, border=self.pad, fill=0)
            top, left = random.randint(0, 2 * self.pad), random.randint(0, 2 * self.pad)
            img = img.crop((left, top, left + w, top + h))
        if self.flip and random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # ToTensor: HWC uint8 -> CHW float in [0, 1]; then Normalize.
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).view(h, w, c).permute(2, 0, 1)
        x = x.contiguous().float().div_(255.0)
        return x.sub_(self.mean).div_(self.std), int(self.labels[i])


# ----------------------------------------------------------------------------- the two paths


@dataclass
class TrainSetup:
    """Everything both paths share: model, data (tensor and host copy), settings."""

    model: torch.nn.Module
    data: object  # compatkit.data.ImageSet on the device
    host_images: np.ndarray
    host_labels: np.ndarray
    batch: int
    pad: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    precision: Precision
    channels_last: bool
    seed: int = 0

    def normalize(self) -> Callable[[torch.Tensor], torch.Tensor]:
        mean, std, cl = self.mean, self.std, self.channels_last

        def f(x: torch.Tensor) -> torch.Tensor:
            y = to_float(x, mean, std)
            return y.contiguous(memory_format=torch.channels_last) if cl else y

        return f

    def runtime(self, precision: Precision | None = None) -> Runtime:
        """The setup's device, ``precision`` (default: its own) and input scaling."""
        return Runtime(self.device, precision or self.precision, self.normalize())

    def opt_cfg(self) -> OptimConfig:
        return OptimConfig(
            epochs=1, batch_size=self.batch, lr=0.01, min_lr=1e-4, pad=self.pad, flip=self.flip
        )


def make_setup(
    backbone: str,
    steps: int,
    batch: int,
    device: torch.device,
    precision: Precision | None = None,
    channels_last: bool = False,
    side: int = 0,
    pad: int | None = None,
) -> TrainSetup:
    """A model and ``steps * batch`` random uint8 images at the backbone's natural size
    (``side`` overrides height and width). ``pad``: 2 pixels at 28x28, 4 at 32x32 (paper)."""
    from _common import random_imageset

    c, h, w = natural_shape(backbone)
    if side:
        h = w = side
    model = simplex_model(backbone, c, num_classes=10, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = random_imageset(steps * batch, (c, h, w), 10, seed=0)
    mean, std = _stats(c)
    return TrainSetup(
        model=model,
        data=data.to(device),
        host_images=data.images.numpy(),
        host_labels=data.labels.numpy(),
        batch=batch,
        pad=pad if pad is not None else (4 if h >= 32 else 2),
        flip=True,
        mean=mean,
        std=std,
        device=device,
        precision=precision or Precision(None, False),
        channels_last=channels_last,
    )


def compatkit_epoch(s: TrainSetup) -> int:
    """One epoch through ``train_task``; returns the images trained on."""
    model = s.model
    method = build_method("er")  # cross-entropy on the head's rows; no old model, no memory
    ctx = TaskContext(model, None, 0, list(range(10)), [], device=s.device, normalize=None)
    gen = torch.Generator(device=s.device).manual_seed(s.seed)
    s.seed += 1
    train_task(model, method, ctx, s.data, None, s.opt_cfg(), s.runtime(), gen)
    return len(s.data)  # steps * batch images: no partial batch is dropped


def make_loader(s: TrainSetup, workers: int, pipeline: str = "pil") -> torch.utils.data.DataLoader:
    ds = PerSampleDataset(s.host_images, s.host_labels, s.pad, s.flip, s.mean, s.std, pipeline)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=s.batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=s.device.type == "cuda",
        persistent_workers=workers > 0,  # kind to the baseline: no worker start-up per epoch
        drop_last=False,
    )


def per_sample_epoch(s: TrainSetup, loader: torch.utils.data.DataLoader) -> int:
    """One epoch of the reference-style loop: same optimiser, schedule, loss and precision."""
    model, dev = s.model, s.device
    method = build_method("er")
    cfg = s.opt_cfg()
    opt = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    scaler = torch.amp.GradScaler(dev.type, enabled=s.precision.scaler)
    total, seen = len(loader), 0
    model.train()
    for step, (x, y) in enumerate(loader):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, cfg.lr, cfg.min_lr, 0)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        targets = model.targets(y, "local")
        with autocast(dev, s.precision):
            out = model(x)
        loss, _ = method.loss(StepInputs(out, None, y, targets))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        seen += len(y)
    model.eval()
    return seen


def compatkit_data_only(s: TrainSetup) -> int:
    """The batches compatkit makes in one epoch, without a model: sampling, augmentation,
    normalisation."""
    gen = torch.Generator(device=s.device).manual_seed(s.seed)
    norm, seen = s.normalize(), 0
    for images, labels in half_and_half_batches(s.data, None, s.batch, gen):
        x = norm(augment(images, s.pad, s.flip, gen))
        seen += len(labels)
    del x
    return seen


def per_sample_data_only(s: TrainSetup, loader: torch.utils.data.DataLoader) -> int:
    seen = 0
    for x, y in loader:
        x = x.to(s.device, non_blocking=True)
        seen += len(y)
    return seen


def compare(
    s: TrainSetup,
    repeats: int,
    workers: list[int],
    data_only: bool = True,
    pipeline: str = "pil",
    warmup: bool = True,
) -> dict:
    """Median images/s of each path over ``repeats`` interleaved epochs (after a warm-up
    epoch of each). Keys: ``compatkit``, ``per_sample_w{n}`` and, with ``data_only``, the
    same with a ``data_`` prefix (batch making alone, no model)."""
    loaders = {w: make_loader(s, w, pipeline) for w in workers}
    paths: dict[str, Callable[[], int]] = {"compatkit": lambda: compatkit_epoch(s)}
    for w, ld in loaders.items():
        paths[f"per_sample_w{w}"] = lambda ld=ld: per_sample_epoch(s, ld)
    if data_only:
        paths["data_compatkit"] = lambda: compatkit_data_only(s)
        for w, ld in loaders.items():
            paths[f"data_per_sample_w{w}"] = lambda ld=ld: per_sample_data_only(s, ld)
    if warmup:
        for fn in paths.values():
            fn()
    rates: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(repeats):
        for k, fn in paths.items():
            with Timer(s.device) as t:
                n = fn()
            rates[k].append(n / t.seconds)
    return {k: median(v) for k, v in rates.items()}


# ----------------------------------------------------------------------------- report


def _rows(label: str, shape: str, r: dict, workers: list[int]) -> list[list[str]]:
    rows = []
    for w in workers:
        k = f"per_sample_w{w}"
        row = [
            label,
            shape,
            f"{r['compatkit']:,.0f}",
            f"per sample, {w} workers",
            f"{r[k]:,.0f}",
            f"**{r['compatkit'] / r[k]:.2f}x**",
        ]
        if f"data_{k}" in r:
            row.append(f"{r['data_compatkit']:,.0f} vs {r[f'data_{k}']:,.0f}")
        else:
            row.append("-")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="steps per epoch, smallcnn (default 20)")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per path (default 5)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="DataLoader workers of the per-sample path (default: 0 2)",
    )
    p.add_argument(
        "--resnet-steps",
        type=int,
        default=2,
        help="steps per epoch of the ResNet-18 comparison (0 skips it; default 2)",
    )
    p.add_argument("--pipeline", choices=["pil", "torchvision"], default="pil")
    args = p.parse_args(argv)
    device = setup(args)
    steps, repeats, batch, rsteps = args.steps, args.repeats, args.batch, args.resnet_steps
    workers, side = args.workers, 0
    if args.quick:
        steps, repeats, batch, rsteps, side = 2, 1, 8, min(rsteps, 1), 8
        workers = [w for w in workers if w == 0] or [0]

    figures: dict = {}
    s = make_setup("smallcnn", steps, batch, device, side=side)
    figures["smallcnn"] = compare(s, repeats, workers, pipeline=args.pipeline)
    shape_s = "x".join(map(str, s.data.images.shape[1:]))
    rows = _rows("smallcnn", shape_s, figures["smallcnn"], workers)
    if rsteps:
        r = make_setup("resnet18_cifar", rsteps, batch, device, side=side)
        # Model-bound on a CPU: one warm-up step is plenty, two repetitions, no data-only rows.
        figures["resnet18_cifar"] = compare(
            r, max(1, min(repeats, 2)), [0], data_only=False, pipeline=args.pipeline
        )
        rows += _rows(
            "resnet18_cifar",
            "x".join(map(str, r.data.images.shape[1:])),
            figures["resnet18_cifar"],
            [0],
        )

    f = figures["smallcnn"]
    best_w = max(workers, key=lambda w: f[f"per_sample_w{w}"])
    best = f[f"per_sample_w{best_w}"]
    ratio = f["compatkit"] / best
    # Share of a training step spent making the batch, from the data-only rates.
    share_ck = f["compatkit"] / f["data_compatkit"]
    share_ps = best / f[f"data_per_sample_w{best_w}"]
    lines = [
        f"Images/s of training (forward, backward, SGD step; cross-entropy; batch {batch}, fp32 "
        f"on the CPU) on random uint8 images, crop padding {s.pad} px + flip, {steps} steps per "
        f"epoch for smallcnn and {rsteps} for resnet18_cifar; median of {repeats} interleaved "
        "epochs per path after a warm-up epoch. Per-sample pipeline: "
        + ("torchvision transforms" if args.pipeline == "torchvision" else "PIL + numpy")
        + " in a `Dataset`, `DataLoader(shuffle=True)`; its workers are persistent "
        "(no start-up cost per epoch, in the baseline's favour). The last column times the "
        "batch making alone (no model).",
        "",
        md_table(
            [
                "backbone",
                "input",
                "compatkit images/s",
                "baseline",
                "baseline images/s",
                "ratio",
                "batches alone, images/s (compatkit vs baseline)",
            ],
            rows,
        ),
    ]
    if not args.quick:
        lines += [
            "",
            f"smallcnn: compatkit / best per-sample configuration ({best_w} workers) = "
            f"**{ratio:.2f}x** end to end (target >= 3x: {'met' if ratio >= 3 else 'not met'}); "
            f"making the batches alone is "
            f"**{f['data_compatkit'] / f[f'data_per_sample_w{best_w}']:.1f}x** faster. Batch "
            f"making takes {100 * share_ps:.0f}% of a baseline step and {100 * share_ck:.1f}% of "
            "a compatkit step: the rest is the model's forward and backward pass, which both "
            "paths share, so the end-to-end ratio cannot exceed "
            f"{1 / (1 - share_ps):.2f}x here whatever the data path does.",
        ]
        if rsteps:
            rr = figures["resnet18_cifar"]
            lines += [
                "",
                f"resnet18_cifar: {rr['compatkit'] / rr['per_sample_w0']:.2f}x. The model takes "
                "nearly all of the time on a CPU (a few images per second), so how batches are "
                "made hardly matters; the data path matters on a GPU, where the model step "
                "takes milliseconds (gpu_check.py measures both paths there).",
            ]
    if args.quick:
        lines += ["", "(--quick: tiny sizes; these figures measure nothing.)"]
    finish(NAME, TITLE, __file__, argv, "\n".join(lines), device, results=args.results)
    return figures


if __name__ == "__main__":
    main()
