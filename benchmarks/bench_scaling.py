"""How run time grows with the number of tasks and with the gallery, to plan a large run.

Two tables:

1. Tasks. The runner (``compatkit.protocol.experiment.Experiment``) on T = 3, 5, 9 tasks of
   one class each after a first task of two, d-Simplex-HOC, one provider: the
   provider's training (once per run), the training per task (O(T) in total),
   and the evaluation split into its two parts: feature extraction, once per
   model (O(T)), and the T(T+1)/2 matrix entries (O(T^2) but each a small
   matrix product), measured as a second evaluation that finds every feature
   in the cache.
2. Gallery. Extracting N gallery images with one model (linear in N) and one
   matrix entry at a query of 4,000 for each metric (template, recall@1 by
   torch and, when installed, by faiss, mAP), at N = 1k, 4k, 16k.

Data: synthetic files in the Fashion-MNIST format (28x28x1, 10 classes), so
the figures do not depend on having the dataset; speed does not depend on the
pixels.

    python benchmarks/bench_scaling.py [--quick]
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from _common import (
    Timer,
    base_parser,
    finish,
    median,
    random_imageset,
    setup,
    simplex_model,
    write_fake_fashion,
)
from _results import md_table
from compatkit import retrieval
from compatkit.config import load_config
from compatkit.config.shipped import resolve_config
from compatkit.data import DATASET_STATS, Normalize
from compatkit.protocol.evaluate import extract_features
from compatkit.protocol.experiment import Experiment
from compatkit.runtime.device import Precision, Runtime
from compatkit.runtime.log import RunLog

NAME = "bench_scaling"
TITLE = "bench_scaling: time against the number of tasks and the gallery size"

__all__ = ["gallery_scaling", "main", "task_scaling"]


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def task_scaling(
    tmp: Path, tasks: list[int], per_class: int, epochs: int, query: int, gallery: int
) -> dict:
    """Seconds of each phase of a run of T tasks, for each T in ``tasks``."""
    fake = write_fake_fashion(
        tmp / "fashion",
        train_per_class=per_class + 50 + 20 + query,
        test_per_class=gallery,
    )
    out = {}
    with _env("COMPATKIT_FASHION_MNIST", str(fake)):
        for t in tasks:
            sets = [
                "methods=[hoc]",
                f"local.data.classes={list(range(t + 1))}",  # 2 classes, then 1 per task
                f"local.data.per_class={per_class}",
                "local.data.download=false",
                "local.initial_increment=2",
                "local.increment=1",
                f"local.memory_per_class={min(20, per_class)}",
                "no_replacement=true",
                "providers.0.data.per_class=50",
                "providers.0.epochs=2",
                "providers.1.data.per_class=10",
                "providers.2.data.per_class=10",
                f"train.epochs={epochs}",
                f"eval.query.per_class={query}",
                "eval.full_gallery=false",
                "device=cpu",
            ]
            cfg = load_config(resolve_config(None), sets)
            run_dir = tmp / f"T{t}"
            runner = Experiment(cfg, run_dir, RunLog(run_dir / "log.txt", quiet=True, live=False))
            runner.plan  # noqa: B018 - load and check the data outside the timings
            runner.write_records()
            with Timer() as tp:
                runner.providers.ensure()
            with Timer() as tt:
                runner.run_sequence("hoc", cfg.seeds[0])
            with Timer() as te:
                cold = runner.evaluate()
            with Timer() as tw:
                warm = runner.evaluate()
            assert warm["_meta"]["feature_extractions"] == 0
            out[t] = {
                "provider_s": tp.seconds,
                "train_s": tt.seconds,
                "train_per_task_s": tt.seconds / t,
                "eval_s": te.seconds,
                "matrix_s": tw.seconds,
                "extract_s": max(0.0, te.seconds - tw.seconds),
                "extractions": cold["_meta"]["feature_extractions"],
                "images_per_task": per_class,
                "query": cold["_meta"]["query_images"],
                "gallery": cold["_meta"]["gallery_images"],
            }
    return out


def gallery_scaling(sizes: list[int], query: int, device: torch.device, repeats: int) -> dict:
    """Extraction seconds for N gallery images, and seconds per matrix entry, per size."""
    model = simplex_model("smallcnn", 1, num_classes=20, device=device).eval()
    mean, std = DATASET_STATS["fashion-mnist"]
    rt = Runtime(device, Precision(None, False), Normalize(mean, std))

    g = torch.Generator().manual_seed(0)
    # Two models' features of the same images: class centres plus noise, d = 19.
    centres = torch.randn(10, 19, generator=g)
    ql = torch.randint(0, 10, (query,), generator=g)
    qf = centres[ql] + torch.randn(query, 19, generator=g)
    metrics = ["template", "recall@1 (torch)", "mAP"]
    if retrieval.faiss_available():
        metrics.insert(2, "recall@1 (faiss)")
    out = {}
    for n in sizes:
        data = random_imageset(n, (1, 28, 28), 10, seed=n, device=device)
        extract_features(model, data.subset(list(range(min(n, 256)))), rt, 1024)  # warm
        times = []
        for _ in range(repeats):
            with Timer(device) as t:
                extract_features(model, data, rt, 1024)
            times.append(t.seconds)
        gl = torch.randint(0, 10, (n,), generator=g)
        gf = centres[gl] + torch.randn(n, 19, generator=g)
        entry = {}
        results = {}
        for m in metrics:
            name, backend = (m.split(" ")[0], m.split("(")[1][:-1]) if "(" in m else (m, "torch")
            args = ([qf], [gf], ql, gl)
            retrieval.cross_model_matrix(*args, metric=name, backend=backend)  # warm-up
            ts = []
            for _ in range(repeats):
                with Timer() as t:
                    results[m] = retrieval.cross_model_matrix(*args, metric=name, backend=backend)
                ts.append(t.seconds)
            entry[m] = median(ts)
        if "recall@1 (faiss)" in results:
            assert results["recall@1 (faiss)"] == results["recall@1 (torch)"]
        out[n] = {"extract_s": median(times), "entry_s": entry}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, nargs="+", default=[3, 5, 9])
    p.add_argument("--gallery-sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--epochs", type=int, default=5, help="epochs per task (default 5)")
    p.add_argument("--per-class", type=int, default=300, help="images per local class (300)")
    args = p.parse_args(argv)
    device = setup(args)
    tasks, sizes, epochs, per_class = args.tasks, args.gallery_sizes, args.epochs, args.per_class
    query, q_run, g_run, repeats = 4000, 500, 500, 3
    if args.quick:
        tasks, sizes, epochs, per_class = [2, 3], [50, 100], 1, 20
        query, q_run, g_run, repeats = 60, 10, 10, 1

    with tempfile.TemporaryDirectory() as tmpdir:
        ts = task_scaling(Path(tmpdir), tasks, per_class, epochs, q_run, g_run)
    gs = gallery_scaling(sizes, query, device, repeats)

    rows = []
    for t, f in ts.items():
        rows.append(
            [
                t,
                f"{f['provider_s']:.1f}",
                f"{f['train_s']:.1f}",
                f"{f['train_per_task_s']:.2f}",
                f"{f['extract_s']:.2f} ({f['extractions']} models)",
                f"{f['extract_s'] / max(1, f['extractions']):.3f}",
                f"{f['matrix_s']:.2f} ({t * (t + 1) // 2} entries)",
            ]
        )
    metrics = list(next(iter(gs.values()))["entry_s"])
    grows = []
    for n, f in gs.items():
        grows.append(
            [f"{n:,}", f"{f['extract_s']:.2f}"] + [f"{f['entry_s'][m] * 1e3:.1f}" for m in metrics]
        )
    any_t = next(iter(ts.values()))
    lines = [
        f"Runs of T tasks (d-Simplex-HOC, one provider; {per_class} images per class, "
        f"{epochs} epochs per task, memory {min(20, per_class)} per class; evaluation on "
        f"{any_t['query']} query and {any_t['gallery']} gallery images; smallcnn at 1x28x28, "
        "fp32). Seconds:",
        "",
        md_table(
            [
                "T",
                "provider (once)",
                "training, all tasks",
                "training per task",
                "extraction (once per model)",
                "per model",
                "matrix entries (cached features)",
            ],
            rows,
        ),
        "",
        "Training grows linearly in T (every task makes about the same number of steps: the "
        "first has two classes in full batches, each later one a class of new images in half "
        "batches, the rehearsal memory filling the other half); "
        "extraction linearly (one pass per model); the matrix quadratically, but each entry is "
        "one small matrix product, so at these sizes it is a rounding error next to extraction. "
        "The cached evaluation also reloads each model's cached features.",
        "",
        f"Gallery size (one smallcnn model; entries at a query of {query:,}, d = 19, 10 classes; "
        f"median of {repeats}):",
        "",
        md_table(
            ["gallery", "extract gallery, s"] + [f"{m} entry, ms" for m in metrics],
            grows,
        ),
        "",
        "Plan a run with: evaluation ~ T x (query + gallery) / extraction rate + T(T+1)/2 x "
        "entry time; training ~ T x per-task time. The template entry (the paper's metric) "
        "hardly grows with the gallery: the gallery is reduced to one template per class once, "
        "and queries are scored against 10 templates. recall@1 and mAP score every gallery "
        "item for every query, and mAP also sorts them."
        + (
            " faiss (what `backend='auto'` picks for recall@K on CPU float32 features when it "
            "is installed) gives the same recall with a k-nearest search instead of scoring "
            "and masking the whole query x gallery matrix."
            if retrieval.faiss_available()
            else ""
        ),
    ]
    if not retrieval.faiss_available():
        lines += ["", "(faiss is not installed here: no faiss column.)"]
    if args.quick:
        lines += ["", "(--quick: tiny sizes; these figures measure nothing.)"]
    finish(NAME, TITLE, __file__, argv, "\n".join(lines), device, results=args.results)
    return {"tasks": ts, "gallery": gs}


if __name__ == "__main__":
    main()
