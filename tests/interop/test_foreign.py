"""Foreign models: TorchScript, .pt2 and ONNX with their JSON; hostile archives refused
before anything they carry runs; export round trips."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from compatkit.errors import CheckpointError
from compatkit.interop.archive import pickle_globals
from compatkit.interop.foreign import foreign_format, load_foreign
from compatkit.upgrade.embed import ForeignEmbedder, load_embedder

PRE = {"input_size": [3, 16, 16], "resize": 20, "mean": [0.5] * 3, "std": [0.25] * 3}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()


def _json(path: Path, **kw) -> None:
    path.with_suffix(".json").write_text(json.dumps({**PRE, **kw}))


def _save(fmt: str, path: Path) -> nn.Module:
    net = _net()
    x = torch.zeros(2, 3, 16, 16)
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(net, x), str(path))
    elif fmt == "pt2":
        ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("b")},))
        torch.export.save(ep, str(path))
    else:
        torch.onnx.export(
            net, (x,), str(path), input_names=["x"], dynamic_axes={"x": {0: "b"}}, dynamo=False
        )
    _json(path, name=f"prod-{fmt}")
    return net


@pytest.mark.parametrize(
    ("fmt", "name"), [("torchscript", "m.pt"), ("pt2", "m.pt2"), ("onnx", "m.onnx")]
)
def test_foreign_model_gives_its_features(tmp_path: Path, fmt: str, name: str) -> None:
    path = tmp_path / name
    net = _save(fmt, path)
    assert foreign_format(path) == fmt
    emb = load_embedder(path)
    assert isinstance(emb, ForeignEmbedder) and emb.feat_dim == 6
    assert emb.contract["feat_dim"] == 6 and emb.contract["head"] == "none"
    import hashlib

    assert emb.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    got = emb.embed(images, batch_size=2)
    with torch.no_grad():
        want = torch.nn.functional.normalize(net((images.float() / 255 - 0.5) / 0.25), dim=1)
    assert torch.allclose(got, want, atol=1e-5)


def test_missing_or_bad_json_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    _save("torchscript", path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match=r"needs its preprocessing in .*m\.json"):
        load_foreign(path)
    _json(path, input_size=[3, 9])
    with pytest.raises(CheckpointError, match="input_size must be"):
        load_foreign(path)
    _json(path, input_size=[3, 1, 1])  # the conv needs at least 3x3
    with pytest.raises(CheckpointError, match="does not run on input 3x1x1"):
        load_foreign(path)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _prove_live(raw: bytes, marker: Path) -> None:
    """The payload is real: plain pickle.loads (in another process) creates the marker."""
    code = "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=raw, check=False, capture_output=True)
    assert marker.exists()
    marker.unlink()


def test_hostile_torchscript_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    _save("torchscript", good)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    _prove_live(payload, marker)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, payload if info.filename.endswith("/data.pkl") else data)
    _json(bad)
    assert foreign_format(bad) == "torchscript"
    with pytest.raises(CheckpointError) as e:
        load_embedder(bad)
    msg = str(e.value)
    assert "refusing to load this TorchScript archive" in msg and "system" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_hostile_pt2_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    good = tmp_path / "good.pt2"
    _save("pt2", good)
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buf)  # a torch.save archive, its pickle swapped
    inner = io.BytesIO()
    payload = pickle.dumps(_Payload(marker), protocol=2)
    _prove_live(payload, marker)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zi, zipfile.ZipFile(inner, "w") as zo:
        for info in zi.infolist():
            zo.writestr(info, payload if info.filename.endswith("data.pkl") else zi.read(info))
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = inner.getvalue() if "sample_inputs" in info.filename else zin.read(info)
            zout.writestr(info, data)
    _json(bad)
    with pytest.raises(
        CheckpointError, match=r"refusing to load this torch.export archive.*system"
    ):
        load_embedder(bad)
    assert not marker.exists()


def test_pickle_scan_follows_memo_and_refuses_what_it_cannot() -> None:
    assert pickle_globals(pickle.dumps(torch.Size([2]), protocol=4)) == ["torch.Size"]
    hidden = pickle.dumps(_Payload(Path("x")), protocol=4)
    assert "posix.system" in pickle_globals(hidden) or "nt.system" in pickle_globals(hidden)
    # STACK_GLOBAL of names that are not plain string pushes: refused, not guessed.
    tricky = b"\x80\x04\x8c\x02os\x94K\x01\x8c\x06system\x94\x93."
    with pytest.raises(Exception, match="cannot follow"):
        pickle_globals(tricky)


def test_onnx_external_data_outside_its_folder_is_refused(tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "m.onnx"
    _save("onnx", path)
    proto = onnx.load(str(path))
    t = proto.graph.initializer[0]
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    t.ClearField("raw_data")
    onnx.save(proto, str(path))
    with pytest.raises(CheckpointError, match="outside the model's folder"):
        load_foreign(path)
