"""Evaluation of a T-task sequence: extract once per model (compatkit) vs once per pair (reference).

The compatibility matrix needs, for every pair j <= i, the query features of
model i against the gallery features of model j. The reference code
re-extracts both for every pair: T(T+1)/2 gallery and T(T+1)/2 query
extractions. compatkit (``compatkit.protocol.evaluate.evaluate_sequence``, what
``compatkit run`` and ``compatkit eval`` call) extracts each model's query and
gallery once, T of each, and computes the T(T+1)/2 entries by matrix algebra
(``compatkit.retrieval.cross_model_matrix``). The ratio tends to (T+1)/2:
4x at T = 7, 16x at T = 31.

Models: smallcnn with a d-Simplex head, random weights (speed does not depend
on them), saved with ``compatkit.checkpoint.save_checkpoint`` and loaded back
as the runner does; both ways must give the same matrix. At T = 31 the
reference way would take most of 500 pair evaluations, so by default it is
timed on two complete rows of the matrix (i = 0 and i = T - 1, 32 pairs whose
entries are checked) and its total is extrapolated from the time per pair,
which is the same for every pair (``--full-reference`` runs all of them).

Finally (``--cli``, the default except with ``--quick``): ``compatkit run`` on a small synthetic
Fashion-MNIST-format dataset, then ``compatkit eval`` twice on its run
directory, without and then with the feature cache (the run's
``metrics.json`` reports the feature extractions each time).

    python benchmarks/bench_eval.py [--quick] [--full-reference] [--no-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from _common import Timer, base_parser, finish, random_imageset, setup, simplex_model
from _results import md_table
from compatkit.checkpoint import load_checkpoint, save_checkpoint
from compatkit.data import DATASET_STATS, to_float
from compatkit.protocol.evaluate import EvalSet, evaluate_sequence, extract_features
from compatkit.retrieval import template_accuracy
from compatkit.runtime.device import Precision, Runtime

NAME = "bench_eval"
TITLE = "bench_eval: features once per model vs once per (query model, gallery model) pair"
K = 20  # d-Simplex rows (feature dimension 19), as in the default configuration

__all__ = ["main", "make_checkpoints", "reference_matrix"]


def make_checkpoints(folder: Path, t: int, backbone: str = "smallcnn") -> list[Path]:
    """``t`` task checkpoints of differently initialised models, written as the runner does."""
    paths = []
    for i in range(t):
        model = simplex_model(backbone, 1, num_classes=K, seed=1000 + i)
        path = folder / f"task_{i}.pt"
        save_checkpoint(path, model, extra={"role": "task", "task": i})
        paths.append(path)
    return paths


def reference_matrix(
    ckpts: list[Path],
    query,
    gallery,
    normalize,
    batch_size: int,
    device: torch.device,
    rows: list[int] | None = None,
) -> tuple[np.ndarray, int]:
    """The reference's loop: for every pair j <= i of the chosen ``rows`` (default all),
    extract the gallery with model j and the query with model i, then score. Models are
    loaded once (in the reference's favour). Returns (matrix with NaN where not computed,
    pairs evaluated)."""
    models = []
    for c in ckpts:
        m, _ = load_checkpoint(c, map_location=device)
        models.append(m.eval())
    rt = Runtime(torch.device(device), Precision(None, False), normalize)
    t = len(ckpts)
    out = np.full((t, t), np.nan)
    pairs = 0
    for i in rows if rows is not None else range(t):
        for j in range(i + 1):
            g = extract_features(models[j], gallery, rt, batch_size)
            q = extract_features(models[i], query, rt, batch_size)
            out[i, j] = template_accuracy(q, query.labels, g, gallery.labels)
            pairs += 1
    return out, pairs


def _compatkit_matrix(ckpts, query, gallery, normalize, batch_size, device) -> np.ndarray:
    rt = Runtime(torch.device(device), Precision(None, False), normalize)
    res, fresh = evaluate_sequence(
        ckpts,
        EvalSet(query, gallery),
        rt,
        batch_size=batch_size,
        cache_dir=None,  # no feature cache: every model is extracted, once
        full_gallery=False,
    )
    assert fresh == len(ckpts)
    t = len(ckpts)
    m = np.full((t, t), np.nan)
    for i, row in enumerate(res["matrix"]):
        m[i, : len(row)] = row
    return m


def _cli(tmp: Path, quick: bool) -> dict:
    """``compatkit run`` on synthetic files, then ``compatkit eval`` cold and warm."""
    from _common import default_config, run_command, small_run_sets, write_fake_fashion

    per_q, per_g = (20, 20) if quick else (1000, 500)
    fake = write_fake_fashion(tmp / "fashion", train_per_class=per_q + 200, test_per_class=per_g)
    env = {**os.environ, "COMPATKIT_FASHION_MNIST": str(fake), "PYTHONUNBUFFERED": "1"}
    run = tmp / "run"
    cmd = [sys.executable, "-m", "compatkit", "run", *default_config(), "--out", str(run)]
    cmd += ["--quiet"]
    for s in small_run_sets(per_q, tiny=quick):
        cmd += ["--set", s]
    run_command(cmd, env)
    out = {}
    for label in ("cold", "warm"):
        if label == "cold":
            for d in run.glob("*/seed_*/features"):
                shutil.rmtree(d)
        with Timer() as t:
            run_command([sys.executable, "-m", "compatkit", "eval", str(run), "--quiet"], env)
        meta = json.loads((run / "metrics.json").read_text())["_meta"]
        out[label] = {
            "wall_s": t.seconds,
            "eval_s": meta.get("eval_seconds"),
            "extractions": meta.get("feature_extractions"),
        }
    meta = json.loads((run / "metrics.json").read_text())["_meta"]
    out["models"] = meta["num_tasks"] * len(meta["methods"]) * len(meta["seeds"])
    out["shape"] = (
        f"{len(meta['methods'])} methods x {len(meta['seeds'])} seed(s) x {meta['num_tasks']} tasks"
    )
    out["query"], out["gallery"] = meta["query_images"], meta["gallery_images"]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, nargs="+", default=[7, 31], help="T values (7 31)")
    p.add_argument("--gallery", type=int, default=2000, help="gallery images (default 2,000)")
    p.add_argument("--query", type=int, default=4000, help="query images (default 4,000)")
    p.add_argument("--batch", type=int, default=1024, help="extraction batch (default 1,024)")
    p.add_argument(
        "--full-reference",
        action="store_true",
        help="time the reference way on every pair, also for large T (slow)",
    )
    p.add_argument(
        "--cli",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time `compatkit eval` on a small run (default: yes, except with --quick)",
    )
    args = p.parse_args(argv)
    device = setup(args)
    tasks, n_g, n_q, batch = args.tasks, args.gallery, args.query, args.batch
    if args.quick:
        tasks, n_g, n_q, batch = [3], 40, 60, 32

    gallery = random_imageset(n_g, (1, 28, 28), 10, seed=1, device=device)
    query = random_imageset(n_q, (1, 28, 28), 10, seed=2, device=device)
    mean, std = DATASET_STATS["fashion-mnist"]

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return to_float(x, mean, std)

    figures: dict = {"gallery": n_g, "query": n_q, "T": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for t in tasks:
            folder = tmp / f"T{t}"
            ckpts = make_checkpoints(folder, t)
            with Timer(device) as tc:
                ours = _compatkit_matrix(ckpts, query, gallery, normalize, batch, device)
            all_pairs = t * (t + 1) // 2
            sample = None
            if not args.full_reference and all_pairs > 100:
                sample = [0, t - 1]  # two complete rows: the first and the last model's queries
            with Timer(device) as tr:
                ref, pairs = reference_matrix(
                    ckpts, query, gallery, normalize, batch, device, rows=sample
                )
            done = ~np.isnan(ref)
            # Same features, same templates: equal up to the 4 decimals the run files keep.
            np.testing.assert_allclose(ours[done], ref[done], atol=1e-3)
            ref_total = tr.seconds * all_pairs / pairs
            figures["T"][t] = {
                "compatkit_s": tc.seconds,
                "compatkit_extractions": 2 * t,
                "reference_s": ref_total,
                "reference_measured_s": tr.seconds,
                "reference_pairs_timed": pairs,
                "reference_extractions": 2 * all_pairs,
                "ratio": ref_total / tc.seconds,
                "extrapolated": pairs < all_pairs,
            }
            f = figures["T"][t]
            rows.append(
                [
                    t,
                    f"{f['compatkit_s']:.1f} s ({2 * t} extractions)",
                    f"{ref_total:.1f} s ({2 * all_pairs} extractions)"
                    + (f", from {pairs} pairs timed" if f["extrapolated"] else ""),
                    f"**{f['ratio']:.1f}x**",
                    f"{(t + 1) / 2:.1f}x",
                    f"{int(done.sum())} entries equal",
                ]
            )
        want_cli = args.cli if args.cli is not None else not args.quick
        cli = _cli(tmp, args.quick) if want_cli else None
    figures["cli"] = cli

    big = max(tasks)
    # compatkit's time is T passes over query + gallery (plus loading and the matrix, which
    # are small): seconds per image and model, to extrapolate to other sizes.
    per_image = figures["T"][big]["compatkit_s"] / (big * (n_g + n_q))
    lines = [
        f"Gallery {n_g:,} and query {n_q:,} random 1x28x28 images, 10 classes; smallcnn, "
        f"d-Simplex head (K = {K}); fp32, extraction batch {batch}; template accuracy "
        "(the paper's metric). compatkit: `evaluate_sequence` on the checkpoints "
        "(load, extract query and gallery once per model, `cross_model_matrix`). Reference: "
        "per pair j <= i, gallery by model j and query by model i, then the same metric; "
        "models loaded once. One timing each.",
        "",
        md_table(
            ["T", "compatkit", "reference", "ratio", "(T+1)/2", "check"],
            rows,
        ),
    ]
    if not args.quick and big >= 31:
        r = figures["T"][big]["ratio"]
        lines += [
            "",
            f"Target (>= 5x at T = 31): {r:.1f}x, {'met' if r >= 5 else 'NOT met'}.",
        ]
    if not args.quick:
        t = big
        for ng, nq in ((10_000, 50_000),):
            ours = t * (ng + nq) * per_image
            theirs = t * (t + 1) / 2 * (ng + nq) * per_image
            lines += [
                "",
                f"At the paper's sizes (gallery {ng:,}, query {nq:,}) and T = {t}, with this "
                f"machine's smallcnn extraction ({1 / per_image:,.0f} images/s): compatkit about "
                f"{ours / 60:.0f} min, the reference way about {theirs / 3600:.1f} h. With the "
                "paper's ResNet-18 on a GPU both shrink by the GPU's speed-up; the ratio stays "
                f"about (T+1)/2 = {(t + 1) / 2:.0f}x, since extraction is nearly all the work.",
            ]
    if cli:
        lines += [
            "",
            f"`compatkit eval` on a run directory ({cli['models']} checkpoints: {cli['shape']}; "
            f"query {cli['query']:,}, gallery {cli['gallery']:,}, synthetic "
            "Fashion-MNIST-format files; wall time includes starting Python):",
            "",
            md_table(
                ["", "wall time", "evaluation time (metrics.json)", "feature extractions"],
                [
                    [
                        "first (cache removed)",
                        f"{cli['cold']['wall_s']:.1f} s",
                        f"{cli['cold']['eval_s']} s",
                        cli["cold"]["extractions"],
                    ],
                    [
                        "second (cached)",
                        f"{cli['warm']['wall_s']:.1f} s",
                        f"{cli['warm']['eval_s']} s",
                        cli["warm"]["extractions"],
                    ],
                ],
            ),
        ]
    if args.quick:
        lines += ["", "(--quick: tiny sizes; these figures measure nothing.)"]
    finish(NAME, TITLE, __file__, argv, "\n".join(lines), device, results=args.results)
    return figures


if __name__ == "__main__":
    main()
