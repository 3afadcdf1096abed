"""environment.json: the CPU, threads, torch's build and the determinism settings, read from
this process (and changed with it, not written once and forgotten)."""

from __future__ import annotations

import json
import os

import torch

from compatkit.runtime.device import resolve_precision
from compatkit.runtime.environment import describe_environment


def test_environment_records_cpu_threads_build_and_determinism(monkeypatch) -> None:
    device = torch.device("cpu")
    before = torch.get_num_threads()
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    try:
        torch.set_num_threads(1)
        one = describe_environment(device, resolve_precision("auto", device))
        torch.set_num_threads(2)
        two = describe_environment(device, resolve_precision("auto", device))
    finally:
        torch.set_num_threads(before)
    assert one["threads"]["intra_op"] == 1 and two["threads"]["intra_op"] == 2
    assert one["threads"]["env"]["MKL_CBWR"] == "COMPATIBLE"
    cpu = one["cpu"]
    assert cpu["model"] and cpu["logical_cores"] == os.cpu_count()
    assert cpu["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    if os.path.exists("/proc/cpuinfo"):
        flags = open("/proc/cpuinfo").read()
        assert ("avx2" in (cpu["flags"] or [])) == (" avx2" in flags)
    build = one["build"]
    assert build["blas"] and build["parallel_backend"]
    assert (build["onednn"] is not None) == torch.backends.mkldnn.is_available()
    assert one["cuda"] is None and one["cuda_device"] is None  # a CPU run
    det = one["determinism"]
    assert det["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert det["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    json.dumps(one)  # what environment.json holds
