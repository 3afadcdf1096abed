"""``compatkit train`` on a folder of JPEGs: held in memory against streamed from the files.

    python benchmarks/bench_stream_train.py --images DIR --generate 2000 --sizes 2000 8000

``--generate N`` writes N JPEGs of 256 to 512 pixels a side (random sizes, 10 classes) under
``DIR/base`` once (the files of ``bench_embed.py``); a collection of size S is ``DIR/S``, S
hard links to them. For each size and each ``--workers`` count, the same training runs twice,
one mode after the other, each in a fresh process: ``compatkit train`` with ``--in-memory``
(every file decoded once by the workers, then batches gathered in memory) and with
``--stream`` (the workers decode each batch's files in every epoch). Same seed, options and
model (smallcnn at 3 x ``--image-size``^2, resize and centre crop), so both train the same
weights. Reported: the whole command's images/s (images x epochs over its wall time, the
in-memory path's one decoding pass included), the training loop's images/s, and the peak
resident memory (``ru_maxrss``) of the main process and of its largest child (a worker, or a
helper process torch starts on import: the largest child does not depend on the mode).
What to read: the main process's peak grows with the collection in memory (N x C x H x W
bytes decoded) and stays flat when streamed; streaming pays the decoding in every epoch.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import DEFAULT_RESULTS, command_line, machine, md_table, render_section, write_section
from bench_embed import collection, generate

NAME = "bench_stream_train"
TITLE = "bench_stream_train: compatkit train in memory against streamed from JPEG files"
MODES = ("memory", "stream")


def _peaks_mib() -> tuple[float, float]:
    kib = 1024  # ru_maxrss is in KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 2**20
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 2**20
    return own, kids


def child(args: argparse.Namespace) -> None:
    """One ``compatkit train`` in this process; prints its figures as one JSON line."""
    from compatkit.checkpoint import load_checkpoint
    from compatkit.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/m.pt"
        flag = "--in-memory" if args.child == "memory" else "--stream"
        argv = ["train", args.data, "--out", out, flag]
        argv += ["--workers", str(args.workers), "--epochs", str(args.epochs)]
        argv += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
        t = time.perf_counter()
        rc = main([*argv, "--device", "cpu", "--threads", "1", "--quiet"])
        seconds = time.perf_counter() - t
        extra = load_checkpoint(out)[1]["extra"]
    assert rc == 0 and extra["data"]["loading"] == args.child
    own, kids = _peaks_mib()
    images = extra["data"]["images"]
    print(
        json.dumps(
            {
                "images": images,
                "seconds": seconds,
                "rate": images * args.epochs / seconds,
                "train_rate": extra["images_per_s"],
                "loss": extra["losses"][-1],
                "rss_main_mib": own,
                "rss_child_mib": kids,
            }
        )
    )


def measure(args: argparse.Namespace, mode: str, data: Path, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(data)]
    cmd += ["--workers", str(workers), "--epochs", str(args.epochs)]
    cmd += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{mode} with {workers} workers failed:\n{r.stderr[-2000:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "mode": mode, "workers": workers}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    p.add_argument("--images", type=Path, help="folder for the generated collections")
    p.add_argument("--generate", type=int, default=2000, help="distinct JPEGs to write")
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--workers", type=int, nargs="+", default=[2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64, help="square side of the model input")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.workers = args.workers[0]
        child(args)
        return []
    import torch

    torch.set_num_threads(1)  # what the children use, as the machine line reports it
    if args.quick:
        args.generate, args.sizes, args.workers, args.epochs = 30, [30, 60], [0], 1
        args.image_size, args.batch_size = 32, 16
    with tempfile.TemporaryDirectory() as tmp:
        images = args.images or Path(tmp)
        images.mkdir(parents=True, exist_ok=True)
        generate(images / "base", args.generate)
        rows = []
        for size in args.sizes:
            data = collection(images, size)
            for w in args.workers:
                for mode in MODES:
                    rows.append({**measure(args, mode, data, w), "size": size})
                    print(json.dumps(rows[-1]), flush=True)
    table = md_table(
        [
            "images",
            "mode",
            "workers",
            "command images/s",
            "training images/s",
            "peak RSS main (MiB)",
            "largest child (MiB)",
        ],
        [
            (
                f"{r['size']:,}",
                "in memory" if r["mode"] == "memory" else "streamed",
                r["workers"],
                f"{r['rate']:.0f}",
                f"{r['train_rate']:.0f}",
                f"{r['rss_main_mib']:.0f}",
                f"{r['rss_child_mib']:.0f}",
            )
            for r in rows
        ],
    )
    decoded = 3 * args.image_size**2
    body = (
        f"{args.generate:,} distinct JPEGs of 256-512 px (random sizes), each collection made "
        f"of hard links to them; smallcnn at 3x{args.image_size}x{args.image_size} "
        f"({decoded / 2**10:.0f} KiB an image decoded), epochs: {args.epochs}, batch "
        f"{args.batch_size}, one torch thread, every row a fresh process, the two modes of "
        f"a size one after the other.\n\n{table}\n"
    )
    given = list(argv if argv is not None else sys.argv[1:])
    shown = ["DIR" if i and given[i - 1] == "--images" else a for i, a in enumerate(given)]
    text = render_section(
        NAME, TITLE, command_line(__file__, shown), machine("cpu"), body
    )  # fmt: skip
    print(text)
    write_section(args.results, NAME, text)
    return rows


if __name__ == "__main__":
    main()
