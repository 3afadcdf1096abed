"""``compatkit index backfill``: re-embed part of a gallery with a new model, in one process
or spread over workers.

Three ways to run one backfill (:mod:`compatkit.upgrade.backfill` has the rules):

- plain: plan, then embed every chunk here; resumable after a kill;
- ``--plan-only`` once, then ``--worker I/N`` on each of N machines or GPUs (a cluster's
  array job runs the same command with its own I); every worker embeds its own disjoint share
  of the plan's chunks, and a rerun of a killed worker's command finishes its share;
- ``--workers N``: both steps on this machine: the plan, then N worker processes of this
  command (``--devices`` spreads them over GPUs), each with its share of the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading

__all__ = ["add_backfill_parser", "run_backfill"]


def add_backfill_parser(sub, common) -> None:
    """The ``backfill`` sub-command's arguments (``common`` adds those every sub-command has)."""
    f = sub.add_parser("backfill", help="re-embed part of the gallery with a new model, in place")
    f.add_argument("index", metavar="IDX", help="the gallery (written by index build)")
    f.add_argument("--model", required=True, metavar="NEW", help="checkpoint of the new model")
    f.add_argument(
        "--fraction",
        type=float,
        required=True,
        metavar="F",
        help="target: afterwards F (0..1) of the gallery holds NEW's vectors",
    )
    f.add_argument(
        "--policy",
        default="random",
        choices=("random", "class", "uncertainty"),
        help="which items first: a seeded random order (default), whole classes that moved "
        "most, or items least confidently placed by their stored vectors",
    )
    f.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    f.add_argument(
        "--chunk",
        type=int,
        default=4096,
        help="items embedded and committed per atomic step (default 4096)",
    )
    f.add_argument("--data", help="the gallery's images, if they moved since the build")
    f.add_argument(
        "--replan",
        action="store_true",
        help="discard an unfinished backfill planned with other arguments",
    )
    w = f.add_mutually_exclusive_group()
    w.add_argument(
        "--plan-only",
        action="store_true",
        help="record the plan and embed nothing (then start the workers with --worker I/N)",
    )
    w.add_argument(
        "--worker",
        metavar="I/N",
        help="embed worker I's share (I = 1..N) of the recorded plan: chunks I, I+N, I+2N, ...",
    )
    w.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="plan, then run N worker processes here (with --devices, one GPU each)",
    )
    f.add_argument(
        "--devices",
        metavar="LIST",
        help="with --workers: GPUs for the workers, round robin (0,1,2,3 or cuda:0,cuda:1)",
    )
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    common(f)


def _arguments(args: argparse.Namespace) -> dict:
    """What one backfill call takes from the command line (the plan's arguments, the
    gallery's address, how to embed)."""
    keys = ("index", "model", "fraction", "policy", "seed", "chunk", "data", "replan")
    keys += ("batch_size", "device", "collection", "timeout")
    return {k: getattr(args, k) for k in keys}


def run_backfill(args: argparse.Namespace, log, warn) -> int:
    from ..errors import InputError
    from ..upgrade.backfill import backfill, parse_worker

    if args.devices is not None and not args.workers:
        raise InputError("--devices spreads the processes of --workers N over GPUs; add --workers")
    if args.workers is not None:
        return _launch(args, log)
    worker = parse_worker(args.worker) if args.worker else None
    rep = backfill(**_arguments(args), log=log, plan_only=args.plan_only, worker=worker)
    warn(
        [
            f"{p}: searches of this index stay refused until a check is recorded"
            for p in rep.warnings
        ]
        if 0 < rep.new_fraction < 1
        else []
    )
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1))
        return 0
    if args.plan_only:
        if rep.plan:
            print(
                f"backfill plan recorded: {rep.plan['items']} items in "
                f"{rep.chunks} chunks of {rep.plan['chunk']}; start each worker with the same "
                "command and --worker I/N instead of --plan-only"
            )
        else:
            print(f"nothing to plan: {100 * rep.new_fraction:.1f}% already by NEW")
        return 0
    resumed = (
        f", {rep.resumed_chunks} chunk(s) already done by an interrupted run"
        if rep.resumed_chunks
        else ""
    )
    share = ""
    if args.worker:
        share = f"worker {rep.worker} ({rep.own_chunks} of {rep.chunks} chunks): "
    print(
        f"backfill {rep.policy}: {share}{rep.embedded} items embedded{resumed}; "
        f"{100 * rep.new_fraction:.1f}% of {rep.count} items now by {rep.fingerprint[:12]}"
        + ("" if rep.finished else "; other workers' chunks are still out")
    )
    return 0


def _worker_command(args: argparse.Namespace, i: int, n: int, device: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "compatkit", "index", "backfill", str(args.index)]
    cmd += ["--model", str(args.model), "--fraction", repr(float(args.fraction))]
    cmd += ["--policy", args.policy, "--seed", str(args.seed), "--chunk", str(args.chunk)]
    cmd += ["--batch-size", str(args.batch_size), "--device", device or args.device]
    cmd += ["--timeout", repr(float(args.timeout)), "--worker", f"{i}/{n}"]
    if args.data:
        cmd += ["--data", str(args.data)]
    if args.collection:
        cmd += ["--collection", args.collection]
    return cmd


def _launch(args: argparse.Namespace, log) -> int:
    """``--workers N``: record the plan here, then run the N workers as processes of this
    command and wait for them; their progress lines come through prefixed ``[I/N]``."""
    import torch

    from ..errors import InputError
    from ..sweep.devices import parse_devices, slots
    from ..sweep.execute import default_threads
    from ..upgrade.backfill import MAX_WORKERS, backfill, refuse_lite_workers

    n = args.workers
    if not 1 <= n <= MAX_WORKERS:
        raise InputError(f"--workers {n}: must be a number of processes in 1..{MAX_WORKERS}")
    if args.json:
        raise InputError("--json reports one process; with --workers, read `index info --json`")
    refuse_lite_workers(args.index, n, f"--workers {n}")
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = slots(n, parse_devices(args.devices, cuda) if args.devices else [])
    rep = backfill(**_arguments(args), log=log, plan_only=True)
    if not rep.plan:
        print(f"backfill {rep.policy}: nothing to do; {100 * rep.new_fraction:.1f}% already by NEW")
        return 0
    log(f"plan recorded: {rep.chunks} chunks; starting {n} workers")
    env = {**os.environ, "OMP_NUM_THREADS": str(default_threads(n))}
    procs = [
        subprocess.Popen(
            _worker_command(args, i + 1, n, devices[i]),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    last = [""] * n

    def relay(i: int) -> None:
        for line in procs[i].stdout:
            last[i] = line.rstrip("\n")
            log(f"[{i + 1}/{n}] {last[i]}")

    readers = [threading.Thread(target=relay, args=(i,), daemon=True) for i in range(n)]
    for t in readers:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    for t in readers:
        t.join()
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if failed:
        i, c = failed[0]
        raise InputError(
            f"backfill worker {i + 1}/{n} failed (exit {c}: {last[i]}); the committed chunks "
            "stay: rerun the same command to finish"
        )
    from ..upgrade.index import Gallery

    with Gallery.open(args.index, args.collection, args.timeout) as g:
        fraction = g.store.count([rep.fingerprint]) / g.count
        pending = g.store.get_record("plan") is not None
    print(
        f"backfill {rep.policy}: {n} workers embedded {rep.plan['items']} items "
        f"in {rep.chunks} chunks; {100 * fraction:.1f}% of {rep.count} items now by "
        f"{rep.fingerprint[:12]}" + ("; the plan is still pending (rerun)" if pending else "")
    )
    return 0
