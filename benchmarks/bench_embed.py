"""``compatkit embed`` over JPEG collections: images/s and peak memory, against torchvision.

    python benchmarks/bench_embed.py --images DIR --generate 10000 --sizes 10000 100000

``--generate N`` writes N JPEGs of 256 to 512 pixels a side (random sizes, 10 classes)
under ``DIR/base`` once; a collection of size S is ``DIR/S``: S hard links to those files
(``S / N`` copies of each), so that 100,000 items cost no more disk or generation time than
N. Each measurement is a fresh process: ``compatkit embed`` of the collection with 0, 2 and
4 workers, and the plain loop a user would write instead, torchvision's ``ImageFolder``
(``Resize``, ``CenterCrop``, ``PILToTensor``) and a ``DataLoader`` with the same workers and
batch size, the same model, features kept in a list. Reported: images/s and the peak
resident memory (``ru_maxrss``) of the main process and of its largest child process (the
workers; with 0 workers a helper process torch starts on import sets the figure, so the
workers stay below it when it does not change). The model is
a compatkit checkpoint (smallcnn, 3x64x64 input, resize 72) so that decoding dominates.
torchvision is needed only for the baseline (``--baseline-python`` names an interpreter that
has it when this one does not).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import DEFAULT_RESULTS, command_line, machine, md_table, render_section, write_section

BATCH = 64
CLASSES = 10


def generate(base: Path, n: int, seed: int = 0) -> None:
    """``n`` JPEGs of random sizes (256-512 px a side) in ``CLASSES`` class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (base / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = base / f"c{i % CLASSES}" / f"{i:07d}.jpg"
        if p.exists():
            continue
        h, w = (int(v) for v in rng.integers(256, 513, size=2))
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        img.save(p, quality=85)


def collection(images: Path, size: int) -> Path:
    """``images/<size>``: ``size`` hard links to the generated files, in class folders."""
    base = sorted((images / "base").glob("c*/*.jpg"))
    out = images / str(size)
    if out.is_dir() and sum(1 for _ in out.glob("c*/*.jpg")) == size:
        return out
    for k in range(size):
        src = base[k % len(base)]
        dst = out / src.parent.name / f"{k:07d}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(src, dst)
    return out


def model(path: Path) -> Path:
    import torch

    from compatkit.checkpoint import save_checkpoint
    from compatkit.model import ModelSpec, build_model

    torch.manual_seed(0)
    m = build_model(ModelSpec("smallcnn", 3, 15, "simplex", 16))
    pre = {"input_size": [3, 64, 64], "resize": 72, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_checkpoint(path, m, extra={"preprocess": pre})
    return path


def _peaks() -> tuple[float, float]:
    kb = 1024  # ru_maxrss is in KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb / 2**20
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kb / 2**20
    return own, kids


def run_compatkit(ckpt: str, data: str, workers: int) -> dict:
    from compatkit.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        argv = ["embed", ckpt, data, "--out", f"{tmp}/f", "--workers", str(workers), "--quiet"]
        rc = main([*argv, "--batch-size", str(BATCH)])
        dt = time.perf_counter() - t
        n = len(np.load(f"{tmp}/f.npy", mmap_mode="r"))
    assert rc == 0
    return {"images": n, "seconds": dt}


def run_torchvision(ckpt: str, data: str, workers: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    from compatkit.upgrade.embed import load_embedder

    emb = load_embedder(ckpt)
    pre = emb.preprocess
    tf = transforms.Compose(
        [
            transforms.Resize(pre.resize, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(pre.crop),
            transforms.PILToTensor(),
        ]
    )
    ds = datasets.ImageFolder(data, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=workers)
    t = time.perf_counter()
    out = []
    with torch.no_grad():
        for x, _ in loader:
            out.append(F.normalize(emb.model.features(emb.normalize(x)), dim=1).numpy())
    dt = time.perf_counter() - t
    return {"images": sum(len(o) for o in out), "seconds": dt}


def child(args: argparse.Namespace) -> None:
    run = run_compatkit if args.child == "compatkit" else run_torchvision
    res = run(args.ckpt, args.data, args.workers)
    own, kids = _peaks()
    print(json.dumps({**res, "rss_main_mib": own, "rss_worker_mib": kids}))


def measure(python: str, kind: str, ckpt: Path, data: Path, workers: int) -> dict:
    cmd = [python, __file__, "--child", kind, "--ckpt", str(ckpt), "--data", str(data)]
    cmd += ["--workers", str(workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{kind} with {workers} workers failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {**out, "kind": kind, "workers": workers, "rate": out["images"] / out["seconds"]}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=Path, help="folder for the generated collections")
    p.add_argument("--generate", type=int, default=10_000, help="distinct JPEGs to write")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--baseline-python", default=sys.executable)
    p.add_argument("--skip-baseline-above", type=int, default=10**9, help="collection size")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--child", choices=("compatkit", "torchvision"), help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.workers = args.workers[0]
        child(args)
        return []
    args.images.mkdir(parents=True, exist_ok=True)
    generate(args.images / "base", args.generate)
    ckpt = model(args.images / "model.pt")
    rows = []
    for size in args.sizes:
        data = collection(args.images, size)
        for w in args.workers:
            kinds = [("compatkit", sys.executable)]
            if size <= args.skip_baseline_above:
                kinds.append(("torchvision", args.baseline_python))
            for kind, py in kinds:
                r = measure(py, kind, ckpt, data, w)
                rows.append({**r, "size": size})
                print(json.dumps(rows[-1]), flush=True)
    table = md_table(
        ["images", "loop", "workers", "images/s", "peak RSS main (MiB)", "largest child (MiB)"],
        [
            (
                f"{r['size']:,}",
                r["kind"],
                r["workers"],
                f"{r['rate']:.0f}",
                f"{r['rss_main_mib']:.0f}",
                f"{r['rss_worker_mib']:.0f}",
            )
            for r in rows
        ],
    )
    body = (
        f"{args.generate:,} distinct JPEGs of 256-512 px (random sizes), each collection "
        "made of hard links to them; smallcnn at 3x64x64 (resize 72, centre crop), batch "
        f"{BATCH}, one torch thread per process; every row a fresh process.\n\n{table}\n"
    )
    text = render_section(
        "bench_embed",
        "bench_embed: compatkit embed over JPEG collections against an ImageFolder loop",
        command_line(__file__, argv if argv is not None else sys.argv[1:]),
        machine("cpu"),
        body,
    )
    write_section(args.results, "bench_embed", text)
    return rows


if __name__ == "__main__":
    main()
