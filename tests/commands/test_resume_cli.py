"""Runs and resume through the real command line: a resume uses the run's own config and refuses
mixed settings; files in the wrong slot and damaged memory files are refused in one line naming
the file; a refused run leaves no folder, a failed one records its error in log.txt."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import compatkit.protocol.trainer as protocol
from compatkit import cli
from compatkit.protocol.records import load_memory, save_memory

from .cli import TINY
from .cli import run_cli as _cli

SETTINGS = ["--set", "train.epochs=2"]  # 2 epochs: not tiny.yaml's value


@pytest.fixture(scope="module")
def done(tmp_path_factory, fake_fashion) -> Path:
    """A finished run whose settings differ from its config file (train.epochs=2)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    _cli(["run", str(TINY), "--out", str(out), "--quiet", *SETTINGS], fake_fashion)
    return out


@pytest.fixture
def compatkit(fake_fashion, monkeypatch, capsys):
    """The real command line, in this process (no interpreter start-up per call)."""
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return call


def _refused(result, command: str = "run") -> str:
    code, _, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"compatkit {command}: error: "), err
    return lines[0]


def _copy(done: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(done, dst)
    return dst


def _error_line(r, command: str = "run") -> str:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"compatkit {command}: error: "), r.stderr
    return lines[0]


@pytest.mark.slow
def test_resume_uses_the_runs_own_config_and_never_rewrites_it(done, tmp_path, fake_fashion):
    run = _copy(done, tmp_path)
    before = (run / "config.yaml").read_bytes()
    (run / "hoc/seed_7/task_2.pt").unlink()  # interrupted before the last task ended
    (run / "hoc/seed_7/memory_2.pt").unlink()
    _cli(["run", "--out", str(run), "--resume", "--quiet"], fake_fashion)  # no CONFIG, no --set
    assert (run / "config.yaml").read_bytes() == before
    last = torch.load(run / "hoc/seed_7/task_2.pt", weights_only=True)
    assert len(last["extra"]["losses"]) == 2  # trained with the run's 2 epochs, not 1
    assert "resuming after task 2/3" in (run / "log.txt").read_text()


def test_resume_refuses_settings_that_shape_the_results(done, compatkit):
    before = (done / "config.yaml").read_bytes()
    # the file it was made from, without the original --set
    line = _refused(compatkit("run", TINY, "--out", done, "--resume"))
    assert "train.epochs (2 -> 1)" in line and "--fork" in line
    line = _refused(compatkit("run", "--out", done, "--resume", "--set", "seeds=[7,8]"))
    assert "seeds ([7] -> [7, 8])" in line
    assert (done / "config.yaml").read_bytes() == before


def test_resume_accepts_what_only_changes_speed_or_place(done, compatkit):
    before = (done / "config.yaml").read_bytes()
    code, out, err = compatkit(
        "run", TINY, *SETTINGS, "num_workers_threads=1", "eval.batch_size=7", "device=cpu",
        "--out", done, "--resume", "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert "resume: hoc seed 7: 3/3 tasks done" in out
    assert (done / "config.yaml").read_bytes() == before


def test_resume_needs_a_run_and_fork_starts_a_new_one(done, tmp_path, compatkit):
    empty = tmp_path / "empty"
    assert "holds no run" in _refused(compatkit("run", "--out", empty, "--resume"))
    assert not empty.exists()
    new = tmp_path / "fork"
    code, out, err = compatkit(
        "run", "--out", done, "--resume", "--set", "train.epochs=3", "--fork", new, "--dry-run"
    )
    assert code == 0, err
    assert f"resolved config of {new}" in out and "3 epochs = 6 steps" in out
    assert not new.exists()  # a dry run creates nothing


@pytest.mark.parametrize("what", ["other method", "other task", "other run"])
def test_a_checkpoint_in_the_wrong_slot_is_refused(done, tmp_path, compatkit, what):
    run = _copy(done, tmp_path)
    slot = run / "hoc/seed_7/task_1.pt"
    named = slot
    if what == "other method":  # the ER checkpoint of the same seed and task
        shutil.copy(run / "er/seed_7/task_1.pt", slot)
    elif what == "other task":
        shutil.copy(run / "hoc/seed_7/task_0.pt", slot)
    else:  # the whole folder's files belong to another run
        (run / "run.json").write_text('{"run_id": "another-run"}')
        named = run / "hoc/seed_7/task_0.pt"
    (run / "hoc/seed_7/task_2.pt").unlink()  # so that a resume has work to do
    for argv, command in (
        (["eval", run, "--quiet"], "eval"),
        (["analyze", run, "--quiet", "--no-plots"], "analyze"),
        (["run", "--out", run, "--resume", "--quiet"], "run"),
    ):
        if command != "run":
            shutil.copy(done / "hoc/seed_7/task_2.pt", run / "hoc/seed_7/task_2.pt")
        else:
            (run / "hoc/seed_7/task_2.pt").unlink()
        assert str(named) in _refused(compatkit(*argv), command)
    assert not (run / "hoc/seed_7/task_2.pt").exists()  # the resume trained nothing


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "other method"])
def test_a_damaged_memory_file_is_one_line_naming_it(done, tmp_path, compatkit, damage):
    run = _copy(done, tmp_path)
    (run / "hoc/seed_7/task_2.pt").unlink()
    mem = run / "hoc/seed_7/memory_1.pt"
    data = mem.read_bytes()
    if damage == "truncated":
        mem.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        mem.write_bytes(b"\x80\x04garbage")
    elif damage == "empty":
        mem.write_bytes(b"")
    else:
        state, extra = load_memory(mem)
        save_memory(mem, state, {**extra, "method": "er"})
    assert str(mem) in _refused(compatkit("run", "--out", run, "--resume", "--quiet"))
    assert not (run / "hoc/seed_7/task_2.pt").exists()  # nothing trained on a bad memory


def test_memory_files_are_signed_and_read_safely(done):
    mem = done / "hoc/seed_7/memory_2.pt"
    raw = torch.load(mem, weights_only=True)
    assert raw["format"] == "compatkit-memory" and len(raw["sha256"]) == 64
    state, extra = load_memory(mem)
    assert extra == {
        "role": "memory",
        "method": "hoc",
        "seed": 7,
        "task": 2,
        "run_id": (done / "run.json").read_text().split('"run_id": "')[1].split('"')[0],
    }
    assert state["images"].dtype == torch.uint8 and len(state["labels"]) == 4 * 4  # 4 per class


def test_a_refused_run_creates_nothing(tmp_path, compatkit, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is runs/<name>-<stamp> here
    for bad in ("local.data.classes=[0,1,2,99]", "replacement_tasks=[7]", "train.lr=fast"):
        _refused(compatkit("run", TINY, "--set", bad))
        assert not (tmp_path / "runs").exists(), bad


def test_a_failed_run_records_its_error_in_the_log(tmp_path, compatkit, monkeypatch):
    real = protocol.train_task

    def fail_in_task_2(model, method, ctx, *a, **k):  # an error only the middle of a run shows
        if ctx.task_id == 1:
            raise RuntimeError("out of memory in task 2")
        return real(model, method, ctx, *a, **k)

    monkeypatch.setattr(protocol, "train_task", fail_in_task_2)
    out = tmp_path / "failed"
    code, _, err = compatkit("run", TINY, "--out", out, "--quiet", "--set", "methods=[hoc]")
    assert code == 1 and "internal error" in err
    log = (out / "log.txt").read_text()
    assert "run failed: RuntimeError: out of memory in task 2" in log
    assert (out / "hoc/seed_7/task_0.pt").is_file() and (out / "config.yaml").is_file()
