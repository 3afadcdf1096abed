"""What a result was computed on: the record every run keeps in ``environment.json``.

A number is bitwise reproducible only on the same software *and* the same arithmetic: the
same torch build (its BLAS and oneDNN kernels), the same CPU instruction set that torch and
the BLAS dispatch to, the same thread counts (they decide how reductions are split), and on
CUDA the same GPU, CUDA, cuDNN and determinism settings. This record holds each of them, so
two results can be compared knowing whether they could have been identical
(docs/reproducibility.md).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .device import Precision

__all__ = ["describe_cpu", "describe_cuda", "describe_environment", "determinism", "threads"]

_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
"""Instruction-set flags that decide which kernels torch, MKL and oneDNN run (and so the
order of floating-point operations): a result computed with AVX-512 kernels can differ in the
last bits from one computed with AVX2."""

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_CBWR")
"""Environment variables that change the thread pools or, for MKL_CBWR, MKL's code path."""


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def describe_cpu() -> dict[str, Any]:
    """The CPU: model, vendor, logical cores (all and usable here), the instruction-set flags
    that pick kernels, and the capability torch dispatches to (e.g. AVX2, AVX512)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    return {
        "model": info.get("model name") or platform.processor() or platform.machine(),
        "vendor": info.get("vendor_id"),
        "family": info.get("cpu family"),
        "model_id": info.get("model"),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "flags": sorted(f for f in _CPU_FLAGS if f in flags) if flags else None,
        "torch_capability": capability,
    }


def threads() -> dict[str, Any]:
    """torch's thread counts now, and the variables that set them."""
    return {
        "intra_op": torch.get_num_threads(),
        "inter_op": torch.get_num_interop_threads(),
        "env": {k: os.environ[k] for k in _THREAD_VARS if k in os.environ},
    }


def _build() -> dict[str, Any]:
    """torch's build: BLAS, LAPACK, MKL and oneDNN versions, the parallel backend."""
    show = torch.__config__.show()
    settings = dict(re.findall(r"(\w+)=([^,\n]*)", show))
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", show)
    onednn = re.search(r"MKL-DNN v([\w.]+)", show)
    backend = re.search(r"ATen parallel backend: (.+)", torch.__config__.parallel_info())
    return {
        "blas": settings.get("BLAS_INFO"),
        "lapack": settings.get("LAPACK_INFO"),
        "mkl": mkl.group(1) if mkl and torch.backends.mkl.is_available() else None,
        "onednn": onednn.group(1) if onednn and torch.backends.mkldnn.is_available() else None,
        "parallel_backend": backend.group(1).strip() if backend else None,
        "cuda_build": torch.version.cuda,
    }


def _driver_version() -> str | None:
    """The NVIDIA driver's version, from nvidia-smi (torch does not expose it)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()
    return first[0].strip() if first else None


def describe_cuda(device: torch.device) -> dict[str, Any] | None:
    """GPU name, compute capability, memory, driver, CUDA and cuDNN versions; None off CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "name": props.name,
        "index": index,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "devices_visible": torch.cuda.device_count(),
        "driver": _driver_version(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
    }


def determinism() -> dict[str, Any]:
    """The settings that decide whether GPU kernels (and a few CPU ones) are deterministic."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def describe_environment(device: torch.device, precision: Precision) -> dict[str, Any]:
    """Versions, CPU, threads, torch's build, device and determinism of this process
    (JSON-able)."""
    cuda = describe_cuda(device)
    return {
        "compatkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "precision": precision.name,
        "cuda_device": cuda["name"] if cuda else None,
        "cpu": describe_cpu(),
        "threads": threads(),
        "build": _build(),
        "cuda": cuda,
        "determinism": determinism(),
    }
