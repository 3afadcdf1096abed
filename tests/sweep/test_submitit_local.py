"""``--launcher submitit --cluster local``: the cluster path with real processes. One job is
killed with SIGKILL half-way and resubmitted by the same command; the resubmitted job is then
preempted (SIGUSR2, as SLURM signals it) and requeued by submitit; the numbers equal those of
the local launcher."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from ..commands.cli import TINY, start_cli, wait_for
from ..commands.cli import run_cli as _cli

pytest.importorskip("submitit")


def _pid(job_json) -> int | None:
    try:
        return int(json.loads(job_json.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_a_killed_job_is_resubmitted_and_equals_the_local_launcher(tmp_path, fake_fashion):
    out = tmp_path / "cluster"
    grid = ["sweep", str(TINY), "--set", "methods=[hoc]", "seeds=[7]", "--vary",
            "train.epochs=1,40", "--threads", "1", "--jobs", "2", "--devices", "cpu"]  # fmt: skip
    args = [*grid, "--launcher", "submitit", "--cluster", "local", "--out", str(out)]
    t0 = time.monotonic()

    proc = start_cli(args, fake_fashion)
    wait_for((out / "sweep.json").is_file, proc)
    settings = json.loads((out / "sweep.json").read_text())["settings"]
    names = {e["values"]["train.epochs"]: e["name"] for e in settings.values()}
    key = next(f"{h}:7" for h, e in settings.items() if e["values"]["train.epochs"] == "40")
    first = out / "runs" / names["1"] / "hoc" / "seed_7"
    second = out / "runs" / names["40"] / "hoc" / "seed_7"
    # half-way: its first task finished (checkpoint, then memory), the others not
    wait_for(lambda: (second / "memory_0.pt").is_file(), proc)
    killed = json.loads((second / "job.json").read_text())
    assert killed["launcher"] == "submitit-local" and killed["device"] == "cpu"
    os.kill(killed["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err  # some jobs did not finish: run the command again
    assert "1 of 2 jobs did not finish" in err
    assert f"{names['40']} seed 7: ended without a result" in err
    assert "run the same command again to resubmit them" in err
    assert (first / "done.json").is_file() and not (second / "done.json").exists()
    kept = (first / "done.json").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert [p["setting"] for p in summary["pending"]] == [names["40"]]
    t_kill = time.monotonic() - t0

    # The same command: the finished job is kept, the killed one resubmitted; it resumes after
    # task 1 and is then preempted once (SIGUSR2), requeued by submitit, and resumes again.
    proc = start_cli(args, fake_fashion)
    wait_for(lambda: _pid(second / "job.json") not in (None, killed["pid"])
              and (second / "memory_1.pt").is_file(), proc)  # fmt: skip
    os.kill(_pid(second / "job.json"), signal.SIGUSR2)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "1 of 2 runs already finished" in err and "submitted 1 job(s)" in err
    assert (first / "done.json").read_text() == kept
    log = (out / "runs" / names["40"] / "log.txt").read_text()
    assert "hoc seed 7: resuming after task 1/3" in log
    assert "preempted or out of time; requeued" in log
    assert "hoc seed 7: resuming after task 2/3" in log
    records = json.loads((out / "launcher" / "submitit" / "jobs.json").read_text())["jobs"]
    done = json.loads((second / "done.json").read_text())
    assert records[key]["attempts"] == 2 and records[key]["job_id"] == done["job_id"]
    assert done["job_id"] != killed["job_id"] and done["device"] == "cpu"
    meta = json.loads((out / "runs" / names["40"] / "metrics.json").read_text())["_meta"]
    assert meta["device_per_seed"] == ["cpu"] and meta["seeds"] == [7]
    t_resubmit = time.monotonic() - t0 - t_kill

    ref = tmp_path / "local"
    _cli([*grid, "--out", str(ref)], fake_fashion)
    for epochs, name in names.items():
        got = json.loads((out / "runs" / name / "metrics.json").read_text())["hoc"]
        want = json.loads((ref / "runs" / name / "metrics.json").read_text())["hoc"]
        for k in ("matrix", "AC", "AM", "local_accuracy", "final_self"):
            assert got[k] == want[k], (epochs, k)
    print(f"kill phase {t_kill:.0f} s, resubmit phase {t_resubmit:.0f} s")
