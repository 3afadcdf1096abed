"""Pieces shared by the benchmark scripts: command line, timing, models and synthetic data.

Timing rules, because the machines these run on are shared and noisy: warm up
first (allocator, thread pool, cuDNN autotuning), repeat, take the median, and
compare two ways of doing the same work side by side in one process,
interleaved (A B A B ...), so that a slow minute hurts both equally. The
figures to quote are ratios; absolute rates are for this machine only.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from _results import DEFAULT_RESULTS, command_line, machine, render_section, write_section

__all__ = [
    "NATURAL_SHAPE",
    "Timer",
    "base_parser",
    "default_config",
    "finish",
    "median",
    "natural_shape",
    "pick_device",
    "random_imageset",
    "run_command",
    "setup",
    "simplex_model",
    "small_run_sets",
    "sync",
    "write_fake_fashion",
]

NATURAL_SHAPE: dict[str, tuple[int, int, int]] = {
    # (channels, height, width) each registered backbone is meant for.
    "smallcnn": (1, 28, 28),  # Fashion-MNIST
    "smallcnn_wide": (1, 28, 28),
    "resnet18": (3, 32, 32),  # CIFAR, as the released code runs it
    "resnet18_cifar": (3, 32, 32),  # CIFAR
}


def natural_shape(backbone: str) -> tuple[int, int, int]:
    """Input shape of ``backbone``; CIFAR-sized for a backbone registered later."""
    return NATURAL_SHAPE.get(backbone, (3, 32, 32))


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, a few seconds: checks that the benchmark runs, measures nothing",
    )
    p.add_argument(
        "--results",
        default=str(DEFAULT_RESULTS),
        help="results file whose section this benchmark rewrites (default: benchmarks/RESULTS.md)",
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: torch's choice, one per core; --quick uses 1)",
    )
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and return the ``--device``.

    ``--quick`` runs on one thread: its tensors are tiny, and on cores other processes
    are using, a thread pool spends more time waiting for its threads than computing.
    """
    threads = args.threads or (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    return pick_device(args.device)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here")
    return dev


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


class Timer:
    """``with Timer(device) as t: ...`` then ``t.seconds`` (GPU work included)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._t0


def simplex_model(
    backbone: str,
    in_channels: int,
    num_classes: int = 10,
    device: torch.device | str = "cpu",
    seed: int = 0,
):
    """A ``CompatModel`` with a d-Simplex head (K = ``num_classes``, d = K - 1) whose K
    classes are all mapped, as the runner builds them; weights drawn from ``seed``."""
    from compatkit.model import ModelSpec, build_model

    torch.manual_seed(seed)
    spec = ModelSpec(
        backbone=backbone,
        in_channels=in_channels,
        feat_dim=num_classes - 1,
        head="simplex",
        num_classes=num_classes,
    )
    model = build_model(spec)
    model.add_classes(list(range(num_classes)), "local")
    return model.to(device)


def random_imageset(
    n: int,
    shape: tuple[int, int, int],
    num_classes: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
):
    """``n`` random uint8 images with balanced labels: speed does not depend on content."""
    from compatkit.data import ImageSet

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    return ImageSet(images, labels, [str(c) for c in range(num_classes)]).to(device)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of the MNIST family (big-endian dims, uint8 payload), gzipped."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fake_fashion(
    root: Path, train_per_class: int, test_per_class: int, n_classes: int = 10, seed: int = 0
) -> Path:
    """Files in the exact Fashion-MNIST format (IDX, gzipped) holding random 28x28 images
    with a class-dependent bright patch, so that a benchmark runs anywhere, offline, at any
    size. Point ``COMPATKIT_FASHION_MNIST`` at ``root`` to make compatkit read them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, per in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(n_classes, dtype=np.uint8), per)
        rng.shuffle(labels)
        images = rng.integers(0, 80, size=(len(labels), 28, 28), dtype=np.uint8)
        for c in range(n_classes):
            r, col = divmod(c, 4)
            images[labels == c, 2 + 8 * r : 8 + 8 * r, 2 + 6 * col : 8 + 6 * col] = 230
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def small_run_sets(per_query: int, tiny: bool = False) -> list[str]:
    """``--set`` overrides that shrink the default configuration to a run of seconds on the
    files of :func:`write_fake_fashion` (every role's images still disjoint): 5 tasks, 2
    methods, 3 one-epoch providers; ``per_query`` query images per evaluation class.
    ``tiny``: one method, 2 tasks, one replacement, the smallest run that still does it all."""
    extra = ["methods=[hoc]", "local.data.classes=[1,3,4]", "replacement_tasks=[1]"]
    sets = [
        *(extra if tiny else []),
        "local.data.per_class=40",
        "local.data.download=false",
        "local.memory_per_class=5",
        "train.epochs=1",
        f"eval.query.per_class={per_query}",
        "eval.full_gallery=false",
    ]
    for i in range(3):
        sets += [f"providers.{i}.data.per_class=20", f"providers.{i}.epochs=1"]
    return sets


def run_command(cmd: Sequence[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``, output captured; on failure raise with the end of its error output."""
    r = subprocess.run(list(cmd), env=env, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"`{' '.join(cmd[1:4])} ...` exited with {r.returncode}:\n{tail}")
    return r


def default_config() -> list[str]:
    """The repository's default configuration file as a command argument (empty when the
    scripts run outside the repository: ``compatkit run`` then uses its packaged copy)."""
    config = Path(__file__).resolve().parent.parent / "configs" / "fashion.yaml"
    return [str(config)] if config.is_file() else []


def finish(
    name: str,
    title: str,
    script: str,
    argv: Sequence[str] | None,
    body: str,
    device: torch.device | str = "cpu",
    out: Callable[[str], None] = print,
    results: str | None = None,
) -> str:
    """Print the section and write it into the results file; returns the section text."""
    argv = list(sys.argv[1:] if argv is None else argv)
    section = render_section(name, title, command_line(script, argv), machine(str(device)), body)
    out(section)
    if results:
        write_section(results, name, section)
        out(f"(section {name} of {Path(results).name} updated)")
    return section
