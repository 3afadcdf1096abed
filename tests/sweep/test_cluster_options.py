"""Cluster job resources from flags and a ``submitit:`` block: merged, checked, translated
to submitit's parameters; nothing that could inject a line into an sbatch file gets through."""

from __future__ import annotations

import shutil
import sys

import pytest

from compatkit.cli import main
from compatkit.errors import InputError
from compatkit.sweep.cluster_options import PIP, cluster_options, require_submitit

from ..commands.cli import TINY

NONE = dict.fromkeys(
    ("cluster", "partition", "time_min", "gpus_per_job", "cpus_per_job", "mem_gb",
     "array_parallelism", "account", "qos", "constraint", "slurm")
)  # fmt: skip


def test_block_then_flags_and_the_parameters_for_slurm(tmp_path):
    f = tmp_path / "cluster.yaml"
    f.write_text(
        "submitit:\n  partition: gpu\n  time_min: 600\n  gpus_per_job: 1\n  cpus_per_job: 8\n"
        "  mem_gb: 32\n  array_parallelism: 16\n  account: lab\n"
        "  setup: ['module load cuda/12.4']\n  slurm: {exclude: 'node[01-02]'}\n"
    )
    o = cluster_options(str(f), {**NONE, "time_min": 90, "qos": "high"})
    assert (o.cluster, o.partition, o.time_min, o.qos) == ("slurm", "gpu", 90, "high")
    assert o.executor_parameters() == {
        "timeout_min": 90,
        "name": "compatkit-sweep",
        "gpus_per_node": 1,
        "cpus_per_task": 8,
        "mem_gb": 32,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 16,
        "slurm_account": "lab",
        "slurm_qos": "high",
        "slurm_setup": ["module load cuda/12.4"],
        "slurm_additional_parameters": {"exclude": "node[01-02]"},
    }
    assert "partition gpu, 90 min, 1 GPU(s) + 8 CPUs + 32 GB per job" in o.describe()


def test_local_cluster_takes_the_time_limit_only():
    o = cluster_options(None, {**NONE, "cluster": "local", "gpus_per_job": 2, "partition": "x"})
    assert o.executor_parameters() == {"timeout_min": 240, "name": "compatkit-sweep"}


@pytest.mark.parametrize(
    ("flags", "msg"),
    [
        ({"partition": "gpu\n#SBATCH --mem=0"}, "--partition 'gpu\\\\n#SBATCH --mem=0': not a"),
        ({"account": "lab; rm -rf ~"}, "--account"),
        ({"time_min": 0}, "--time-min must be an integer from 1"),
        ({"gpus_per_job": -1}, "--gpus-per-job must be an integer from 0"),
        ({"mem_gb": 0.0}, "--mem-gb must be a number"),
        ({"cluster": "pbs"}, "--cluster must be one of slurm, local"),
        ({"slurm": {"exclude": "a b"}}, "--slurm.exclude: not an sbatch option"),
        ({"slurm": {"Bad Key": "x"}}, "not an sbatch option"),
    ],
)
def test_refusals_name_the_flag(flags, msg):
    with pytest.raises(InputError, match=msg):
        cluster_options(None, {**NONE, **flags})


BAD_BLOCKS = {
    "partition: gpu\n": "expected one mapping, 'submitit:'",
    "submitit: {partitoin: gpu}\n": "unknown key submitit.partitoin; valid keys",
    "submitit: {time_min: '4h'}\n": "submitit.time_min must be an integer",
    'submitit: {setup: ["a\\nb"]}\n': "submitit.setup must be a list of one-line",
    "submitit: [\n": "not YAML",
}


def test_config_block_refusals_name_the_file_and_key(tmp_path):
    for n, (text, msg) in enumerate(BAD_BLOCKS.items()):
        path = tmp_path / f"cluster{n}.yaml"
        path.write_text(text)
        with pytest.raises(InputError, match=msg) as e:
            cluster_options(str(path), NONE)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="cannot be read"):
        cluster_options(str(tmp_path / "missing.yaml"), NONE)


def test_missing_submitit_is_one_line_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now fails
    with pytest.raises(InputError, match="needs the submitit package") as e:
        require_submitit()
    assert PIP in str(e.value)


def test_cli_refusals(tmp_path, capsys):
    out = tmp_path / "s"
    for extra, msg in (
        (["--launcher", "local", "--partition", "gpu"], "--partition needs --launcher submitit"),
        (["--launcher", "submitit", "--cluster", "local", "--slurm", "exclude"],
         "--slurm expects KEY=VALUE"),
        (["--launcher", "submitit", "--time-min", "0", "--cluster", "local"], "--time-min"),
    ) + (
        # a cluster option alone means --launcher submitit, on SLURM by default
        ((["--partition", "gpu"], "--cluster slurm: no SLURM here (sbatch not found on PATH)"),)
        if shutil.which("sbatch") is None
        else ()
    ):  # fmt: skip
        code = main(["sweep", str(TINY), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and msg in err, err
        assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_the_options_become_these_sbatch_lines(tmp_path, monkeypatch):
    """submitit itself writes the sbatch file from our parameters (no SLURM here: only its
    detection of ``srun`` is answered)."""
    submitit = pytest.importorskip("submitit")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    f = tmp_path / "cluster.yaml"
    f.write_text(
        "submitit:\n  partition: gpu\n  gpus_per_job: 1\n  cpus_per_job: 8\n  mem_gb: 32\n"
        "  account: lab\n  setup: ['module load cuda/12.4']\n  slurm: {exclude: 'node[01-02]'}\n"
    )
    o = cluster_options(str(f), {**NONE, "time_min": 90, "qos": "high", "constraint": "a100"})
    ex = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="slurm")
    ex.update_parameters(**o.executor_parameters())
    text = ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --account=lab",
                 "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                 "#SBATCH --exclude='node[01-02]'", "#SBATCH --job-name=compatkit-sweep",
                 "module load cuda/12.4"):  # fmt: skip
        assert line in text.splitlines(), (line, text)
    # a job array of 40 with at most 16 at once
    o = cluster_options(None, {**NONE, "array_parallelism": 16})
    ex.update_parameters(**o.executor_parameters())
    assert ex._executor.parameters["array_parallelism"] == 16
