"""A few minutes on a CUDA GPU that check compatkit's GPU path and measure it.

Checks, each reported PASS or FAIL (the exit status is 1 if any failed):

1. precision: ``auto`` resolves to bf16 autocast where the GPU supports it,
   else fp16 with a GradScaler; a forward pass under it yields that dtype;
2. data: the training images live on the GPU as one uint8 tensor;
3. training: a few hundred steps of the paper's ResNet-18 (``resnet18``, the
   released ImageNet-style one; d-Simplex head,
   3x32x32 random uint8 images, batch 128, channels-last) through
   ``compatkit.protocol.trainer.train_task``, losses finite; images/s measured;
4. the other precision: fp16 with loss scaling for a few steps, when the
   GPU chose bf16 (both paths of ``train_task`` run);
5. the per-sample baseline of ``bench_train.py`` (PIL + DataLoader, 0 and
   N workers) on the same model and GPU: images/s and the ratio;
6. the fraction of the GPU's peak dense bf16/fp16 FLOP rate that training
   reaches (FLOPs per image counted with ``FlopCounterMode``, x3 for the
   backward pass; a table of peaks for common GPUs, else "peak unknown");
7. a one-process DistributedDataParallel run (nccl, world size 1, rendezvous
   on a free localhost TCP port set here) through ``train_task``;
8. evaluation: features extracted under autocast on the GPU give the same
   compatibility matrix on the GPU as on the CPU.

On a machine without CUDA it prints "no CUDA device: nothing to check" and
exits 0. ``--cpu-dry-run`` runs the same code on the CPU with tiny sizes (gloo
instead of nccl, fp32): it checks the script, not the GPU.

    python benchmarks/gpu_check.py [--steps 300] [--workers 8]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from _common import Timer, finish, simplex_model
from _results import DEFAULT_RESULTS, md_table

NAME = "gpu_check"
BACKBONE = "resnet18"  # the released backbone: its images/s sizes a paper run (docs/reproduce.md)
TITLE = "gpu_check: compatkit's CUDA path (precision, uint8 data, ResNet-18, DDP, evaluation)"

__all__ = ["PEAK_TFLOPS", "flops_per_image", "main", "peak_flops", "run_checks"]

PEAK_TFLOPS: list[tuple[str, float]] = [
    # (substring of torch.cuda.get_device_name, dense bf16 / fp16 tensor-core TFLOP/s without
    # sparsity). First match wins, so the specific names come first.
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16 (no bf16)
    ("T4", 65.0),  # fp16 (no bf16)
]
"""Peak dense half-precision tensor FLOP rates of common GPUs, from their data sheets."""


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16/fp16 FLOP/s of the GPU called ``device_name``, or None if unknown."""
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def flops_per_image(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> float:
    """FLOPs of one forward pass per image (a multiply-add counts 2), by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = 8
    x = torch.zeros(batch, *shape, device=device)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    model.train(was)
    return fc.get_total_flops() / batch


class _Checks:
    """Runs named checks, keeps going after a failure, remembers results and figures."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.rows: list[tuple[str, bool, str]] = []
        self.out = out

    def run(self, name: str, fn: Callable[[], str]) -> bool:
        t0 = time.perf_counter()
        try:
            detail = fn()
            ok = True
        except Exception as e:  # a failed check is reported, the others still run
            detail = f"{type(e).__name__}: {e}"
            self.out(traceback.format_exc())
            ok = False
        detail = f"{detail} ({time.perf_counter() - t0:.1f} s)"
        self.rows.append((name, ok, detail))
        self.out(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")
        return ok


def run_checks(
    device: torch.device,
    backend: str,
    steps: int,
    batch: int,
    workers: int,
    baseline_steps: int,
    side: int = 0,
    out: Callable[[str], None] = print,
) -> tuple[list[tuple[str, bool, str]], dict]:
    """Every check on ``device``; returns (rows of (check, passed, detail), figures)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import bench_train as bt
    from compatkit.data import ImageSet
    from compatkit.methods import TaskContext, build_method
    from compatkit.protocol.trainer import train_task
    from compatkit.retrieval import cross_model_matrix
    from compatkit.runtime.device import Precision, autocast, resolve_precision

    cuda = device.type == "cuda"
    checks = _Checks(out)
    fig: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu"}
    prec = resolve_precision("auto", device)
    fig["precision"] = prec.name
    state: dict = {}

    def c_precision() -> str:
        if cuda:
            want = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            assert prec.name == want, f"auto gave {prec.name}, expected {want}"
            assert prec.scaler == (want == "fp16"), "fp16 needs a GradScaler, bf16 none"
        s = bt.make_setup(BACKBONE, 1, 4, device, prec, channels_last=cuda, side=side)
        with autocast(device, prec):
            f = s.model(s.normalize()(s.data.images)).features
        want_dtype = prec.dtype or torch.float32
        assert f.dtype == want_dtype, f"features came out {f.dtype} under {prec.name} autocast"
        return f"auto -> {prec.name}{' + GradScaler' if prec.scaler else ''}; forward in {f.dtype}"

    def c_data() -> str:
        s = bt.make_setup(BACKBONE, steps, batch, device, prec, channels_last=cuda, side=side)
        state["setup"] = s
        data: ImageSet = s.data
        assert data.images.dtype == torch.uint8, data.images.dtype
        assert data.images.device.type == device.type, data.images.device
        assert data.labels.device.type == device.type
        mib = data.images.numel() / 2**20
        fig["input"] = "x".join(map(str, data.images.shape[1:]))
        return f"{len(data):,} images {fig['input']} uint8 on {device}, {mib:.0f} MiB"

    def c_train() -> str:
        s = state["setup"]
        if cuda:
            w = s.model.backbone.stem[0].weight
            assert w.is_contiguous(memory_format=torch.channels_last), "model not channels-last"
        warm = bt.make_setup(BACKBONE, max(2, steps // 20), batch, device, prec, cuda, side=side)
        bt.compatkit_epoch(warm)  # cuDNN autotuning and allocator warm-up, untimed
        with Timer(device) as t:
            n = bt.compatkit_epoch(s)
        rate = n / t.seconds
        fig["compatkit_images_per_s"] = rate
        fig["train_steps"] = steps
        for p in s.model.parameters():
            assert torch.isfinite(p).all(), "non-finite weights after training"
        return f"{steps} steps of batch {batch}: {rate:,.0f} images/s"

    def c_fp16() -> str:
        if not cuda:
            return "skipped: fp16 autocast needs CUDA"
        if prec.name == "fp16":
            return "fp16 + GradScaler is the auto precision: exercised by the training check"
        p16 = Precision(torch.float16, True)
        s = bt.make_setup(BACKBONE, 10, batch, device, p16, channels_last=True)
        model = s.model
        method = build_method("er")
        ctx = TaskContext(model, None, 0, list(range(10)), [], device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        res = train_task(model, method, ctx, s.data, None, s.opt_cfg(), s.runtime(p16), gen)
        assert all(math.isfinite(v) for v in res.losses), res.losses
        return (
            f"10 steps fp16 + GradScaler, loss {res.losses[-1]:.3f}, "
            f"{res.images_per_s:,.0f} images/s"
        )

    def c_baseline() -> str:
        s = bt.make_setup(
            BACKBONE, baseline_steps, batch, device, prec, channels_last=cuda, side=side
        )
        parts = []
        for w in sorted({0, workers}):
            loader = bt.make_loader(s, w)
            bt.per_sample_epoch(s, loader)  # warm-up epoch (and worker start-up), untimed
            with Timer(device) as t:
                n = bt.per_sample_epoch(s, loader)
            rate = n / t.seconds
            fig[f"per_sample_w{w}_images_per_s"] = rate
            parts.append(f"{w} workers {rate:,.0f} images/s")
            del loader
        best = max(v for k, v in fig.items() if k.startswith("per_sample_"))
        fig["ratio_vs_best_per_sample"] = fig["compatkit_images_per_s"] / best
        return "; ".join(parts) + f"; compatkit / best = {fig['ratio_vs_best_per_sample']:.2f}x"

    def c_flops() -> str:
        s = state["setup"]
        shape = tuple(s.data.images.shape[1:])
        fwd = flops_per_image(s.model, shape, device)
        achieved = fig["compatkit_images_per_s"] * 3 * fwd  # backward ~ 2x forward
        fig["gflops_per_image_forward"] = fwd / 1e9
        fig["achieved_tflops"] = achieved / 1e12
        peak = peak_flops(fig["device"]) if cuda else None
        if peak is None:
            fig["peak_fraction"] = None
            return (
                f"{fwd / 1e9:.3f} GFLOP/image forward; training {achieved / 1e12:.1f} TFLOP/s; "
                "peak unknown"
            )
        fig["peak_tflops"] = peak / 1e12
        fig["peak_fraction"] = achieved / peak
        return (
            f"{fwd / 1e9:.3f} GFLOP/image forward, x3 for training: {achieved / 1e12:.1f} "
            f"TFLOP/s = {100 * achieved / peak:.1f}% of the {peak / 1e12:.0f} TFLOP/s peak"
        )

    def c_ddp() -> str:
        # One process: the rendezvous is a file, not a TCP store, so the check needs no
        # network (a sandbox may have no working loopback, where a TCP store waits 30 min);
        # and a bounded timeout turns any hang of a collective into a FAIL.
        store_dir = tempfile.mkdtemp(prefix="gpu_check_ddp_")
        if not cuda and Path("/sys/class/net/lo").exists():
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # no host-name lookup for gloo
        dist.init_process_group(
            backend,
            init_method=Path(store_dir, "store").as_uri(),
            rank=0,
            world_size=1,
            timeout=datetime.timedelta(seconds=120),
        )
        try:
            s = bt.make_setup(BACKBONE, 5, batch, device, prec, channels_last=cuda, side=side)
            model = s.model
            ddp = DDP(model, device_ids=[device.index or 0] if cuda else None)
            before = [p.detach().clone() for p in model.parameters()]
            method = build_method("er")
            ctx = TaskContext(model, None, 0, list(range(10)), [], device=device)
            gen = torch.Generator(device=device).manual_seed(0)
            res = train_task(
                model, method, ctx, s.data, None, s.opt_cfg(), s.runtime(prec), gen,
                ddp_model=ddp,
            )  # fmt: skip
            assert all(math.isfinite(v) for v in res.losses), res.losses
            moved = sum(
                not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
            )
            assert moved > 0, "no parameter changed"
            t = torch.ones(3, device=device)
            dist.all_reduce(t)
            assert torch.equal(t, torch.ones(3, device=device))
            return f"{backend}, world 1: 5 steps, {moved} tensors updated, all_reduce ok"
        finally:
            dist.destroy_process_group()
            shutil.rmtree(store_dir, ignore_errors=True)

    def c_eval() -> str:
        from compatkit.protocol.evaluate import extract_features

        s = bt.make_setup("smallcnn", 2, 128, device, prec, side=side)
        half = len(s.data) // 2
        query, gallery = s.data.subset(range(half)), s.data.subset(range(half, len(s.data)))
        rt = s.runtime(prec)
        models = [s.model] + [simplex_model("smallcnn", 1, 10, device, seed=i) for i in (1, 2)]
        qf = [extract_features(m, query, rt, 64) for m in models]
        gf = [extract_features(m, gallery, rt, 64) for m in models]
        assert all(f.dtype == torch.float32 and f.device.type == device.type for f in qf)
        on_dev = cross_model_matrix(qf, gf, query.labels, gallery.labels)
        on_cpu = cross_model_matrix(
            [f.cpu() for f in qf], [f.cpu() for f in gf], query.labels.cpu(), gallery.labels.cpu()
        )
        import numpy as np

        np.testing.assert_allclose(on_dev, on_cpu, equal_nan=True)
        return f"3 models, {len(query)} queries: same matrix on {device} and on the CPU"

    checks.run("precision", c_precision)
    checks.run("uint8 data on the device", c_data)
    if checks.rows[-1][1]:
        checks.run(f"train_task, {BACKBONE}, channels-last", c_train)
    checks.run("fp16 + GradScaler", c_fp16)
    if "compatkit_images_per_s" in fig:
        checks.run("per-sample baseline (bench_train)", c_baseline)
        checks.run("fraction of peak FLOP rate", c_flops)
    checks.run("DDP, one process", c_ddp)
    checks.run("evaluation on the device", c_eval)
    return checks.rows, fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="timed training steps (default 300)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="DataLoader workers of the per-sample baseline, besides 0 (default: min(8, cores))",
    )
    p.add_argument(
        "--baseline-steps", type=int, default=60, help="timed steps of the per-sample baseline"
    )
    p.add_argument(
        "--results",
        default=None,
        help="results file whose gpu_check section is rewritten (default: benchmarks/RESULTS.md "
        "on a GPU, none with --cpu-dry-run; '' for none)",
    )
    p.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run the script's code on the CPU with tiny sizes (checks the script, not a GPU)",
    )
    args = p.parse_args(argv)

    if args.cpu_dry_run:
        torch.set_num_threads(1)
        device, backend = torch.device("cpu"), "gloo"
        steps, batch, workers, bsteps, side = 2, 4, 0, 1, 8
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    else:
        device, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
        steps, batch, workers, bsteps, side = (
            args.steps, args.batch, args.workers, args.baseline_steps, 0
        )  # fmt: skip
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels

    results = args.results
    if results is None:
        results = "" if args.cpu_dry_run else str(DEFAULT_RESULTS)
    with Timer(device) as total:
        rows, fig = run_checks(device, backend, steps, batch, workers, bsteps, side)
    failed = [r for r in rows if not r[1]]

    lines = [
        f"Device: {fig['device']}; precision {fig['precision']}; total {total.seconds:.0f} s.",
        "",
        md_table(
            ["check", "result", "detail"],
            [[name, "PASS" if ok else "**FAIL**", detail] for name, ok, detail in rows],
        ),
    ]
    if "compatkit_images_per_s" in fig:
        per = {k: v for k, v in fig.items() if k.startswith("per_sample_")}
        lines += [
            "",
            f"Training images/s ({BACKBONE}, {fig['input']}, batch {batch}, "
            f"{fig['precision']}): compatkit {fig['compatkit_images_per_s']:,.0f}; per-sample "
            + ", ".join(f"{k.split('_')[2][1:]} workers {v:,.0f}" for k, v in per.items()),
        ]
        if fig.get("ratio_vs_best_per_sample"):
            lines[-1] += f"; ratio {fig['ratio_vs_best_per_sample']:.2f}x."
        if fig.get("peak_fraction") is not None:
            lines += [
                f"Model FLOP utilisation: {fig['achieved_tflops']:.1f} of "
                f"{fig['peak_tflops']:.0f} TFLOP/s ({100 * fig['peak_fraction']:.1f}%)."
            ]
    if args.cpu_dry_run:
        lines += ["", "(--cpu-dry-run: tiny sizes on the CPU; checks the script, not a GPU.)"]
    finish(
        NAME,
        TITLE,
        __file__,
        argv,
        "\n".join(lines),
        device,
        results=results or None,
    )
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
