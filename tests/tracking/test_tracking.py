"""Experiment tracking: the step recorder against a hand count, the backends' refusals, and
through the real command line, a tiny run logged to TensorBoard, W&B (offline) and MLflow (a
file store) at once, read back and compared with the run's metrics.json."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from compatkit.errors import InputError
from compatkit.tracking import FLUSH_EVERY, StepRecorder, Tracker, check_backends, flatten
from compatkit.tracking import base as tracking_base

from ..commands.cli import TINY, run_cli


class Recorded(Tracker):
    """A backend that keeps what it is given (in memory), to count against the loop."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float], str]] = []
        self.requests = 0

    def log_scalars(self, values: Mapping[str, float], step: int, axis: str) -> None:
        self.steps.append((step, dict(values), axis))

    def log_steps(self, rows: Sequence[tuple[int, Mapping[str, float]]], axis: str) -> None:
        self.requests += 1
        super().log_steps(rows, axis)

    def log_image(self, tag: str, png: bytes, step: int) -> None: ...

    def log_table(self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]): ...

    def log_summary(self, values: Mapping[str, float]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def test_step_recorder_logs_every_step_in_few_reads() -> None:
    rec_backend = Recorded()
    rec = StepRecorder(rec_backend, step0=100)
    total = 2 * FLUSH_EVERY + 3
    for step in range(1, total + 1):
        loss = torch.tensor(float(step))
        rec(
            {
                "epoch": 0,
                "step": step,
                "total": total,
                "loss": loss,
                "parts": {"ce": loss * 2, "hoc": loss / 2},
                "seen": 16 * step,
                "lr": 0.1 / step,
            }
        )
    assert rec_backend.requests == 3  # two full buffers, then the last step flushes the rest
    steps = [s for s, _, _ in rec_backend.steps]
    assert steps == list(range(101, 101 + total))  # counted on from the earlier tasks' steps
    for step, values, axis in rec_backend.steps:
        k = step - 100
        assert axis == "train/step"
        assert values["train/loss"] == k and values["train/loss_ce"] == 2 * k
        assert values["train/loss_hoc"] == k / 2 and values["train/lr"] == pytest.approx(0.1 / k)
    rates = [v for _, vals, _ in rec_backend.steps for k, v in vals.items() if "images" in k]
    assert len(rates) == 3 and all(r > 0 for r in rates)  # one per read, at its last step


def test_check_backends(monkeypatch) -> None:
    assert check_backends(["tensorboard,TensorBoard", "tensorboard"]) == ["tensorboard"]
    with pytest.raises(InputError, match="unknown tracking backend; choose from"):
        check_backends(["neptune"])
    monkeypatch.setitem(
        tracking_base.BACKENDS, "wandb", ("no_such_module_xyz", "pip install 'compatkit[wandb]'")
    )
    with pytest.raises(InputError, match=r"not installed \(pip install 'compatkit\[wandb\]'\)"):
        check_backends(["wandb"])


def test_flatten() -> None:
    cfg = {"train": {"lr": 0.01}, "seeds": [42, 43], "providers": [{"epochs": 8}]}
    assert flatten(cfg) == {"train.lr": 0.01, "seeds": [42, 43], "providers.0.epochs": 8}


def test_missing_backend_is_one_line_before_anything_is_written(tmp_path, fake_fashion):
    out = tmp_path / "run"
    r = run_cli(["run", str(TINY), "--out", str(out), "--log", "neptune"], fake_fashion, False)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.strip().splitlines() == [
        "compatkit run: error: --log neptune: unknown tracking backend; choose from "
        "tensorboard, wandb, mlflow"
    ]


# ----------------------------------------------------------------------------- end to end


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _backends() -> list[str]:
    return [b for b in ("tensorboard", "wandb", "mlflow") if _installed(b)]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, fake_fashion) -> Path:
    """The tiny run with every installed backend at once, W&B offline, MLflow in a folder;
    its own providers folder, so that the providers are trained (and tracked) here."""
    if not _installed("tensorboard"):
        pytest.skip("tensorboard is not installed (pip install 'compatkit[tensorboard]')")
    root = tmp_path_factory.mktemp("tracked")
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        run_cli(
            [
                "run", str(TINY), "--out", str(root / "run"), "--quiet",
                "--set", f"providers_dir={root / 'providers'}", "num_workers_threads=1",
                "--log", *_backends(),
            ],
            fake_fashion,
        )  # fmt: skip
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return root


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _sequence_steps(fake_fashion: Path, monkeypatch, method: str) -> int:
    """Optimiser steps of one sequence of the tiny config, as the trainer counts them."""
    from compatkit.config import load_config
    from compatkit.methods import METHODS, load_all
    from compatkit.protocol.plan import make_plan

    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))
    load_all()
    cfg = load_config(TINY)
    per_epoch = make_plan(cfg).epoch_steps(cfg, METHODS[method].uses_memory)
    return cfg.train.epochs * sum(per_epoch)


@pytest.mark.slow
def test_tensorboard_holds_steps_results_matrix_config(
    tracked_run, fake_fashion, monkeypatch
) -> None:
    run = tracked_run / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for method in ("hoc", "er"):
        r = metrics[method]["runs"][0]
        acc = _events(run / "tensorboard" / method / "seed_7")
        tags = acc.Tags()
        loss = acc.Scalars("train/loss")
        steps = _sequence_steps(fake_fashion, monkeypatch, method)
        assert [e.step for e in loss] == list(range(1, steps + 1))  # every step, once
        assert len(acc.Scalars("train/lr")) == steps
        if method == "hoc":
            assert {"train/loss_ce", "train/loss_hoc"} <= set(tags["scalars"])
        assert acc.Scalars("result/AC")[0].value == pytest.approx(r["AC"], abs=1e-6)
        assert acc.Scalars("result/AM")[0].value == pytest.approx(r["AM"], abs=1e-4)
        local = [e.value for e in acc.Scalars("task/local_accuracy")]
        assert local == pytest.approx(r["local_accuracy"], abs=1e-4)
        assert [e.step for e in acc.Scalars("task/AA")] == [1, 2, 3]
        assert "compatibility_matrix" in tags["images"]
        text = {t.split("/")[0] for t in tags["tensors"]}
        assert {"config", "environment", "compatibility_matrix_table"} <= text
    providers = sorted(p.name for p in (run / "tensorboard" / "providers").iterdir())
    assert providers == ["p0-learnable", "p0-simplex", "p1-learnable", "p1-simplex"]
    env = json.loads((run / "environment.json").read_text())
    assert env["threads"]["intra_op"] == 1 and env["cpu"]["model"]


def _wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``), read as W&B writes them:
    a 7-byte header, then 32 KiB blocks of records (crc32 4, length 2, kind 1; kinds 1 whole,
    2 first, 3 middle, 4 last part), each a protobuf ``Record``."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_wandb_offline_run_per_method_and_seed(tracked_run, fake_fashion, monkeypatch) -> None:
    if not _installed("wandb"):
        pytest.skip("wandb is not installed (pip install 'compatkit[wandb]')")
    run = tracked_run / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    seen = {}
    for path in (run / "wandb").glob("offline-run-*/run-*.wandb"):
        records = _wandb_records(path)
        (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        summary = {
            _key(i): json.loads(i.value_json)
            for r in records
            if r.WhichOneof("record_type") == "summary"
            for i in r.summary.update
        }
        losses = [
            json.loads(i.value_json)
            for r in records
            if r.WhichOneof("record_type") == "history"
            for i in r.history.item
            if _key(i) == "train/loss"
        ]
        assert info.run_group == "run"
        seen[info.display_name] = (summary, losses)
    assert sorted(seen) == sorted(
        ["run/hoc/seed_7", "run/er/seed_7"]
        + [f"run/providers/p{i}-{h}" for i in (0, 1) for h in ("learnable", "simplex")]
    )
    for m in ("hoc", "er"):
        summary, losses = seen[f"run/{m}/seed_7"]
        assert summary["AC"] == pytest.approx(metrics[m]["runs"][0]["AC"])
        assert summary["AM"] == pytest.approx(metrics[m]["runs"][0]["AM"])
        assert len(losses) == _sequence_steps(fake_fashion, monkeypatch, m)


@pytest.mark.slow
def test_mlflow_file_store_runs_grouped_by_the_run(tracked_run) -> None:
    if not _installed("mlflow"):
        pytest.skip("mlflow is not installed (pip install 'compatkit[mlflow]')")
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient(tracking_uri=(tracked_run / "mlruns").as_uri())
    exp = client.get_experiment_by_name("compatkit")
    runs = client.search_runs([exp.experiment_id], "tags.`compatkit.group` = 'run'")
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(
        ["run/hoc/seed_7", "run/er/seed_7"]
        + [f"run/providers/p{i}-{h}" for i in (0, 1) for h in ("learnable", "simplex")]
    )
    metrics = json.loads((tracked_run / "run" / "metrics.json").read_text())
    for r in runs:
        if r.info.run_name.startswith("run/providers"):
            continue
        method = r.info.run_name.split("/")[1]
        assert r.data.metrics["result/AM"] == pytest.approx(metrics[method]["runs"][0]["AM"])
        assert r.data.params["train.batch_size"] == "16"
        assert r.info.status == "FINISHED"
        history = client.get_metric_history(r.info.run_id, "train/loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(
            range(1, len(history) + 1)
        )


@pytest.mark.slow
def test_same_machine_same_threads_is_bitwise_reproducible(tracked_run, fake_fashion) -> None:
    """The tiny run again, untracked, its providers trained again in a folder of their own,
    at the same thread count: every number is identical (and tracking changed none)."""
    again = tracked_run / "again"
    run_cli(
        [
            "run", str(TINY), "--out", str(again), "--quiet",
            "--set", f"providers_dir={tracked_run / 'providers-again'}", "num_workers_threads=1",
        ],
        fake_fashion,
    )  # fmt: skip
    first = json.loads((tracked_run / "run" / "metrics.json").read_text())
    second = json.loads((again / "metrics.json").read_text())
    for m in ("hoc", "er"):
        a, b = first[m]["runs"][0], second[m]["runs"][0]
        for key in ("matrix", "recall1_matrix", "map_matrix", "AC", "AM", "BC", "FC"):
            assert a[key] == b[key], (m, key)
        assert a["local_accuracy"] == b["local_accuracy"], m
    for p in sorted((tracked_run / "providers").glob("*.pt")):
        q = tracked_run / "providers-again" / p.name
        one = torch.load(p, weights_only=True)["state_dict"]
        two = torch.load(q, weights_only=True)["state_dict"]
        assert all(torch.equal(one[k], two[k]) for k in one), p.name


@pytest.mark.slow
def test_train_pretrain_and_sweep_take_log(tmp_path, fake_fashion) -> None:
    """``--log`` on the other commands: ``train`` logs its steps next to the model file,
    ``pretrain`` one run per provider in the providers folder, and ``sweep`` passes it to
    every job (each (setting, seed) a logged run in its setting's folder)."""
    if not _installed("tensorboard"):
        pytest.skip("tensorboard is not installed (pip install 'compatkit[tensorboard]')")
    model = tmp_path / "models" / "v1.pt"
    run_cli(
        ["train", "fashion-mnist", "--out", str(model), "--epochs", "2", "--batch-size", "64",
         "--quiet", "--log", "tensorboard"],
        fake_fashion,
    )  # fmt: skip
    acc = _events(tmp_path / "models" / "tensorboard" / "v1")
    n = len(acc.Scalars("train/loss"))
    assert n == 2 * -(-240 // 64)  # 2 epochs of 240 images in batches of 64: every step
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [1, 2]

    prov = tmp_path / "providers"
    run_cli(["pretrain", str(TINY), "--out", str(prov), "--quiet", "--log", "tensorboard"],
            fake_fashion)  # fmt: skip
    names = sorted(p.name for p in (prov / "tensorboard" / "providers").iterdir())
    assert names == ["p0-learnable", "p0-simplex", "p1-learnable", "p1-simplex"]

    sweep = tmp_path / "sweep"
    run_cli(
        ["sweep", str(TINY), "--vary", "seeds=[7]", "--set", "methods=[hoc]",
         f"providers_dir={prov}", "--out", str(sweep), "--quiet", "--log", "tensorboard"],
        fake_fashion,
    )  # fmt: skip
    (events,) = sweep.glob("runs/*/tensorboard/hoc/seed_7")
    acc = _events(events)
    assert acc.Scalars("train/loss") and acc.Scalars("result/AC")
