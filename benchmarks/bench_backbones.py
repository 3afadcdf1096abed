"""Training and feature-extraction throughput of every registered backbone.

What it answers: how many images per second each backbone of
``compatkit.backbones`` trains (forward + backward + SGD step, batch 128) and
extracts features (no grad, eval mode) at its natural input size, inside a
``CompatModel`` with a d-Simplex head, as the runner uses it. The model is
the only cost here: inputs are float tensors already on the device (data
handling is ``bench_train.py``'s subject). The target of the default CPU
scenario is smallcnn >= 1,000 images/s of training on a 2-core CPU.

Each backbone's time per repetition is sized from a warm-up step to about a
second, so that the CIFAR ResNet-18 (about 30 images/s on 2 CPU cores) takes
only a few steps; the backbones are measured round-robin and the median of
the repetitions is reported.

    python benchmarks/bench_backbones.py [--quick] [--device cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from _common import Timer, base_parser, finish, median, natural_shape, setup, simplex_model
from _results import md_table
from compatkit.backbones import BACKBONES
from compatkit.losses import cross_entropy
from compatkit.protocol.trainer import make_optimizer

NAME = "bench_backbones"
TITLE = "bench_backbones: throughput of each registered backbone (d-Simplex head)"
TARGET = 1000.0  # images/s of smallcnn training on a 2-core CPU (the default scenario's need)


class _Bench:
    """One backbone's model, batch and optimiser, with one timed repetition per call."""

    def __init__(
        self, name: str, batch: int, extract_batch: int, device: torch.device, side: int = 0
    ) -> None:
        c, h, w = natural_shape(name)
        if side:  # --quick: 8x8 images, the smallest every backbone accepts (3 poolings)
            h = w = side
        self.name, self.shape, self.device = name, (c, h, w), device
        self.model = simplex_model(name, c, num_classes=10, device=device)
        self.params = sum(p.numel() for p in self.model.parameters())
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, c, h, w, generator=g).to(device)
        labels = torch.randint(0, 10, (batch,), generator=g).to(device)
        self.targets = self.model.targets(labels, "local")
        self.xe = torch.randn(extract_batch, c, h, w, generator=g).to(device)
        self.opt = make_optimizer(self.model, lr=1e-3, momentum=0.9, wd=5e-4)
        self.train_steps = self.extract_steps = 1
        self.train_rates: list[float] = []
        self.extract_rates: list[float] = []

    def train_step(self) -> None:
        self.model.train()
        out = self.model(self.x)
        loss = cross_entropy(out.logits, self.targets)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def extract_step(self) -> None:
        self.model.eval()
        self.model.features(self.xe)

    def warm_up(self, target_s: float, steps: int = 2) -> None:
        """``steps`` untimed steps of each kind, then size the repetitions to ~``target_s``."""
        for _ in range(steps):
            with Timer(self.device) as t:
                self.train_step()
        self.train_steps = max(1, round(target_s / max(t.seconds, 1e-6)))
        for _ in range(steps):
            with Timer(self.device) as t:
                self.extract_step()
        self.extract_steps = max(1, round(target_s / max(t.seconds, 1e-6)))

    def repeat_once(self) -> None:
        with Timer(self.device) as t:
            for _ in range(self.train_steps):
                self.train_step()
        self.train_rates.append(self.train_steps * self.x.shape[0] / t.seconds)
        with Timer(self.device) as t:
            for _ in range(self.extract_steps):
                self.extract_step()
        self.extract_rates.append(self.extract_steps * self.xe.shape[0] / t.seconds)


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128, help="training batch (default 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per backbone")
    p.add_argument("--backbones", nargs="*", help="only these (default: every registered one)")
    p.add_argument(
        "--thread-counts",
        type=int,
        nargs="+",
        help="measure at each of these torch thread counts (default: --threads, or torch's)",
    )
    args = p.parse_args(argv)
    device = setup(args)
    batch, extract_batch, repeats, target_s, side = args.batch, 512, args.repeats, 1.0, 0
    if args.quick:
        batch, extract_batch, repeats, target_s, side = 4, 4, 1, 0.0, 8
    names = args.backbones or sorted(BACKBONES)
    counts = args.thread_counts or [torch.get_num_threads()]

    figures: dict = {}
    rows = []
    for threads in counts:
        torch.set_num_threads(threads)
        benches = [_Bench(n, batch, extract_batch, device, side) for n in names]
        for b in benches:
            b.warm_up(target_s, 1 if args.quick else 2)
        for _ in range(repeats):  # round-robin: a noisy minute hits every backbone alike
            for b in benches:
                b.repeat_once()
        for b in benches:
            figures.setdefault(b.name, {"input": list(b.shape), "params": b.params})
            figures[b.name][threads] = {
                "train_images_per_s": median(b.train_rates),
                "extract_images_per_s": median(b.extract_rates),
                "train_steps_timed": b.train_steps * repeats,
            }
        # Rates relative to smallcnn (the CPU default), or to the first backbone measured.
        ref_name = "smallcnn" if "smallcnn" in figures else benches[0].name
        ref = figures[ref_name][threads]["train_images_per_s"]
        for b in benches:
            f = figures[b.name][threads]
            rows.append(
                [
                    b.name,
                    "x".join(map(str, b.shape)),
                    f"{b.params / 1e6:.2f} M",
                    threads,
                    f"{f['train_images_per_s']:,.0f}",
                    f"{f['extract_images_per_s']:,.0f}",
                    f"{f['train_images_per_s'] / ref:.3f}",
                    f["train_steps_timed"],
                ]
            )
    table = md_table(
        [
            "backbone",
            "input",
            "parameters",
            "threads",
            "train images/s",
            "extract images/s",
            f"train rate / {ref_name}",
            "timed train steps",
        ],
        rows,
    )
    lines = [
        f"Training: forward + backward + SGD step, batch {batch}, fp32; extraction: no grad, "
        f"eval mode, batch {extract_batch}. Median of {repeats} round-robin repetitions of about "
        "a second each (a few steps for the slow ones), after a warm-up; torch thread counts "
        f"{counts}.",
        "",
        table,
    ]
    small = figures.get("smallcnn")
    if small and not args.quick:
        for threads in counts:
            rate = small[threads]["train_images_per_s"]
            lines += [
                "",
                f"Target (smallcnn trains at >= {TARGET:,.0f} images/s on a 2-core CPU), "
                f"{threads} thread(s): {rate:,.0f} images/s, "
                + ("met." if rate >= TARGET else "NOT met on this machine at the time."),
            ]
        if len(counts) > 1:
            lines += [
                "",
                "A torch thread pool on cores other processes are using waits for its slowest "
                "thread at every operation: on a shared machine one thread can beat two.",
            ]
    if args.quick:
        lines += ["", "(--quick: tiny sizes; these figures measure nothing.)"]
    finish(NAME, TITLE, __file__, argv, "\n".join(lines), device, results=args.results)
    return figures


if __name__ == "__main__":
    main()
