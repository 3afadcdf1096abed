"""Which device each sweep job runs on: ``--devices`` parsed, defaulted and assigned, without
a GPU (the functions are pure: the GPU count is an argument)."""

from __future__ import annotations

from collections import Counter

import pytest

from compatkit.cli import main
from compatkit.errors import InputError
from compatkit.sweep.devices import default_devices, parse_devices, slots

from ..commands.cli import TINY


def test_parse_devices_names_indices_and_cpu():
    assert parse_devices("0,1,2,3", 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert parse_devices("3, 1", 4) == ["cuda:3", "cuda:1"]  # the order given is kept
    assert parse_devices("cuda:2,cuda:0", 3) == ["cuda:2", "cuda:0"]
    assert parse_devices("cpu", 0) == ["cpu"]


@pytest.mark.parametrize(
    ("text", "count", "msg"),
    [
        ("0", 0, "this machine has no GPU"),
        ("0,4", 4, "cuda:4 asked for, this machine has 4 CUDA device"),
        ("1,cuda:1", 2, "cuda:1 is listed twice"),
        ("0,,1", 2, "'' is not a GPU index"),
        ("gpu0", 2, "'gpu0' is not a GPU index"),
        ("cpu,0", 2, "'cpu' is not a GPU index"),
        ("-1", 2, "'-1' is not a GPU index"),
    ],
)
def test_parse_devices_refusals(text, count, msg):
    with pytest.raises(InputError, match=msg):
        parse_devices(text, count)


def test_default_devices_every_gpu_only_when_the_config_lets_compatkit_choose():
    assert default_devices("auto", 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert default_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    assert default_devices("auto", 0) == []  # no GPU: the config's device, as always
    assert default_devices("cpu", 4) == []  # a config that names its device keeps it
    assert default_devices("cuda:1", 4) == []


@pytest.mark.parametrize("devices", [["cuda:0", "cuda:1", "cuda:2", "cuda:3"], ["cuda:5"]])
@pytest.mark.parametrize("jobs_n", [1, 2, 3, 4, 7, 8])
def test_slots_one_device_per_job_then_round_robin(jobs_n, devices):
    got = slots(jobs_n, devices)
    assert len(got) == jobs_n
    counts = Counter(got)
    if jobs_n <= len(devices):  # each job its own device, the first ones first
        assert got == devices[:jobs_n]
    else:  # shared evenly: no device holds two jobs more than another
        assert set(got) == set(devices)
        assert max(counts.values()) - min(counts.values()) <= 1
    assert got[: len(devices)] == devices[: len(got)]


def test_slots_without_devices_and_refusal():
    assert slots(3, []) == [None, None, None]
    with pytest.raises(InputError, match="--jobs"):
        slots(0, ["cuda:0"])


def test_sweep_refuses_a_gpu_this_machine_does_not_have(tmp_path, capsys):
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    code = main(["sweep", str(TINY), "--out", str(tmp_path / "s"), "--devices", str(n),
                 "--dry-run"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"--devices '{n}': cuda:{n} asked for" in err, err
    assert not (tmp_path / "s").exists()
