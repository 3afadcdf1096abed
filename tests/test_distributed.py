"""DDP under torchrun with the gloo backend on the CPU: 2 processes train what 1 process does.

With the providers shared (trained once) and BatchNorm statistics frozen during fine-tuning,
the only difference between one process and two is floating-point reduction order: the
gathered global batch gives every rank the single-process loss and gradient. Tolerance:
weights within 1e-4 (relative 1e-3) after every task, and identical metrics to 0.5 points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compatkit.checkpoint import load_checkpoint

TINY = Path(__file__).parent / "e2e" / "tiny.yaml"


_STORE_PROBE = """
import datetime, torch.distributed as d
s = d.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=20))
s.set("k", "v")
assert s.get("k") == b"v"
"""


def _run(args, env):
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _loopback_store_error() -> str | None:
    """Why torchrun's rendezvous (a TCP store on 127.0.0.1) cannot work here, or None."""
    try:
        r = subprocess.run(
            [sys.executable, "-c", _STORE_PROBE], capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired:
        return "a TCP store on 127.0.0.1 did not answer within 90 s"
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["failed"])[-1]
    return None


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path, fake_fashion):
    why = _loopback_store_error()
    if why is not None:  # a sandbox without loopback networking: DDP cannot start at all
        pytest.skip(f"no working loopback TCP store for torchrun: {why}")
    env = {**os.environ, "COMPATKIT_FASHION_MNIST": str(fake_fashion), "OMP_NUM_THREADS": "1"}
    if Path("/sys/class/net/lo").exists():
        # Both ranks on this machine: gloo talks over loopback, whatever the host name
        # resolves to (an address of an interface that is down would make it wait).
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    common = [
        "--set",
        f"providers_dir={tmp_path / 'prov'}",
        "--set",
        "train.freeze_bn=true",
        "--set",
        "train.lr=0.01",
        "--set",
        "train.epochs=2",
        "--quiet",
    ]
    _run(
        [
            sys.executable,
            "-m",
            "compatkit",
            "run",
            str(TINY),
            "--out",
            str(tmp_path / "one"),
            *common,
        ],
        env,
    )
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            "-m",
            "compatkit",
            "run",
            str(TINY),
            "--out",
            str(tmp_path / "two"),
            *common,
        ],
        env,
    )
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["_meta"]["processes"] == 2
    for m in ("hoc", "er"):
        for a, b in zip(one[m]["matrix"], two[m]["matrix"], strict=True):
            assert a == pytest.approx(b, abs=0.5)
        for t in range(3):
            ma, _ = load_checkpoint(tmp_path / "one" / m / "seed_7" / f"task_{t}.pt")
            mb, _ = load_checkpoint(tmp_path / "two" / m / "seed_7" / f"task_{t}.pt")
            sa, sb = ma.state_dict(), mb.state_dict()
            for k in sa:
                if sa[k].dtype.is_floating_point:
                    torch.testing.assert_close(sa[k], sb[k], atol=1e-4, rtol=1e-3, msg=k)
    # only rank 0 wrote: one log, no stray files of the other rank
    assert (tmp_path / "two" / "log.txt").read_text().count("done in") == 1
