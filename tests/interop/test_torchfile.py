"""The torch.save reader that executes nothing: what it rebuilds, what it refuses."""

from __future__ import annotations

import builtins
import os
import subprocess
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from compatkit.errors import CheckpointError
from compatkit.interop import InertObject, read_torch_file

from ..released import save_released


def test_rebuilds_tensors_containers_and_optimizer_states(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    base = torch.arange(20, dtype=torch.float64)
    obj = {
        "net": m.state_dict(),
        "optimizer": opt.state_dict(),
        "half": torch.ones(3, dtype=torch.float16),
        "bf16": torch.full((2,), 1.5, dtype=torch.bfloat16),
        "view": base[3:9].view(2, 3),  # a view: offset and strides into a shared storage
        "same": base,
        "t": base.view(4, 5).t(),  # non-contiguous
        "param": torch.nn.Parameter(torch.ones(2)),
        "empty": torch.zeros(0, 5),
        "flags": torch.tensor([True, False]),
        "misc": [1, 2.5, "x", None, (1, 2), {3, 4}, b"raw", np.arange(3), np.float64(0.5)],
        "dtype": torch.float16,
        "device": torch.device("cpu"),
    }
    path = tmp_path / "f.pt"
    torch.save(obj, path)
    got = read_torch_file(path)
    assert isinstance(got["net"], OrderedDict) and list(got["net"]) == list(obj["net"])
    for k, v in obj["net"].items():
        assert torch.equal(got["net"][k], v) and got["net"][k].dtype == v.dtype
    buf = got["optimizer"]["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt.state_dict()["state"][0]["momentum_buffer"])
    assert got["optimizer"]["param_groups"][0]["lr"] == 0.1
    for k in ("half", "bf16", "view", "same", "t", "empty", "flags"):
        assert torch.equal(got[k], obj[k]) and got[k].dtype == obj[k].dtype, k
    assert got["view"].data_ptr() == got["same"].data_ptr() + 3 * 8  # storage still shared
    assert type(got["param"]) is torch.Tensor and torch.equal(got["param"], torch.ones(2))
    misc = got["misc"]
    assert misc[:7] == [1, 2.5, "x", None, (1, 2), {3, 4}, b"raw"]
    assert np.array_equal(misc[7], np.arange(3)) and misc[8] == 0.5
    assert got["dtype"] is torch.float16 and got["device"] == "device:cpu"


def test_an_args_object_of_a_missing_class_becomes_inert_data(tmp_path):
    net = OrderedDict(w=torch.ones(2))
    got = read_torch_file(save_released(tmp_path / "r.pt", net, classes_in_args=300))
    args = got["args"]
    assert isinstance(args, InertObject) and args.qualname == "iamcl2r.params.ExperimentParams"
    fields = args.fields()
    assert fields["classes_at_task"] == [300] and fields["backbone"] == "resnet18"
    assert torch.equal(fields["seen_classes"], torch.arange(300))
    assert np.array_equal(fields["new_data_ids_at_task"][0], np.arange(300))
    assert got["best_acc"] == 61.25 and got["scheduler_lr"]["T_max"] == 70
    assert torch.equal(got["net"]["w"], torch.ones(2))


class _Payload:
    """An object whose unpickling calls ``func(*args)``: the classic pickle exploit."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile(marker) -> list:
    return [
        (os.system, f"touch {marker}"),
        (builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        (builtins.eval, f"open({str(marker)!r}, 'w')"),
        (subprocess.call, ["touch", str(marker)]),
        (builtins.__import__, "os"),  # a harmless-looking builtin, the first step of many exploits
    ]


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("where", ["args", "inside_net"])
def test_a_payload_that_would_run_code_is_refused_without_running(tmp_path, case, where):
    marker = tmp_path / "pwned"
    func, *args = _hostile(marker)[case]
    obj = {"net": OrderedDict(w=torch.ones(2)), "args": None}
    if where == "args":
        obj["args"] = _Payload(func, *args)
    else:
        obj["net"]["w2"] = _Payload(func, *args)
    path = tmp_path / "evil.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as e:
        read_torch_file(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: refusing to load global ") and "\n" not in msg
    assert func.__name__ in msg
    assert not marker.exists()


def test_refuses_what_is_not_a_torch_zip_archive(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_torch_file(tmp_path / "missing.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"not a torch\.save zip archive"):
        read_torch_file(legacy)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match=r"not one written by torch\.save"):
        read_torch_file(other)


def test_refuses_a_truncated_or_doctored_archive(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(100.0)}, path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt"):
        read_torch_file(cut)
    # A tensor claiming more elements than its storage holds.
    short = tmp_path / "short.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(short, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data/0"):
                data = data[:40]
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*storage 0 holds 40 bytes"):
        read_torch_file(short)
