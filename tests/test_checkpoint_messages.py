"""Checkpoint refusals say what is wrong: code refused, damage, every mismatch, the file.

Issue 10, item 9 (and item 16's ``check_compatible`` on models, contracts, metadata, paths).
Crafted payloads are written with ``torch.save``/``pickle`` and never unpickled: the test
fails if the command they carry ever runs (it would create a file).
"""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from compatkit.checkpoint import (
    check_compatible,
    load_checkpoint,
    read_contract,
    save_checkpoint,
    state_dict_mismatch,
)
from compatkit.checkpoint.format import _digest
from compatkit.errors import CheckpointError, IncompatibleModels
from compatkit.model import ModelSpec, build_model

from .commands.cli import TINY, run_cli


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo compromised > {self.marker}",))


def _model(k: int = 8, head: str = "simplex", d: int | None = None):
    torch.manual_seed(0)
    m = build_model(ModelSpec("smallcnn", 1, d or k - 1, head, k))
    m.add_classes([0, 1], "provider")
    m.add_classes([2, 3], "local")
    return m


@pytest.mark.parametrize(
    "write",
    [
        lambda p, e: torch.save({"state_dict": e}, p),
        lambda p, e: torch.save({"state_dict": e}, p, pickle_protocol=4),
        lambda p, e: torch.save({"x": e}, p, _use_new_zipfile_serialization=False),
        lambda p, e: p.write_bytes(pickle.dumps(e, protocol=2)),
        lambda p, e: p.write_bytes(pickle.dumps(e, protocol=5)),
    ],
    ids=["zip", "zip-protocol-4", "legacy", "pickle-2", "pickle-5"],
)
def test_code_payload_is_refused_not_called_corrupt(tmp_path, write):
    marker = tmp_path / "compromised.txt"
    p = tmp_path / "evil.pt"
    write(p, _Evil(str(marker)))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {p}: refusing to unpickle it: it imports posix.system")
    assert "truncated or corrupt" not in msg and "\n" not in msg
    assert not marker.exists()


@pytest.mark.parametrize("cut", [10, 300, -100])
def test_damage_is_still_called_damage(tmp_path, cut):
    good = tmp_path / "good.pt"
    save_checkpoint(good, _model())
    bad = tmp_path / "bad.pt"
    raw = good.read_bytes()
    bad.write_bytes(raw[:cut] if cut > 0 else raw[:cut] + bytes(50))
    with pytest.raises(CheckpointError, match=r"cannot be read, the file is truncated or corrupt"):
        load_checkpoint(bad)


def test_state_dict_mismatch_keeps_every_kind(tmp_path):
    """Missing, unexpected and reshaped weights in one re-signed file: all three reported,
    counted in full, names listed (load_state_dict's message cut to its first line said none)."""
    p = tmp_path / "m.pt"
    save_checkpoint(p, _model())
    obj = torch.load(p, weights_only=True)
    sd = obj["state_dict"]
    dropped = sorted(sd)[:3]
    for k in dropped:
        del sd[k]
    sd["extra.a"] = torch.zeros(1)
    sd["extra.b"] = torch.zeros(1)
    reshaped = next(k for k in sorted(sd) if sd[k].ndim == 4)
    old_shape = list(sd[reshaped].shape)
    sd[reshaped] = sd[reshaped][:-1].clone()
    obj["sha256"] = _digest(obj, sd)
    torch.save(obj, p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {p}: weights do not fit the model its contract describes")
    assert "3 missing key(s): " + ", ".join(dropped) in msg
    assert "2 unexpected key(s): extra.a, extra.b" in msg
    new_shape = [old_shape[0] - 1, *old_shape[1:]]
    assert f"1 shape mismatch(es) (file vs model): {reshaped} {new_shape} vs {old_shape}" in msg
    assert "\n" not in msg


def test_long_mismatch_lists_are_summarised():
    exp = {f"w{i:02d}": torch.zeros(1) for i in range(20)}
    msg = state_dict_mismatch(exp, {})
    assert msg == "20 missing key(s): w00, w01, w02, w03, w04, w05, w06, w07 and 12 more"
    assert state_dict_mismatch(exp, dict(exp)) is None


def test_checkpoint_cannot_be_written_over_a_directory(tmp_path):
    (tmp_path / "task_1.pt").mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        save_checkpoint(tmp_path / "task_1.pt", _model())


# ----------------------------------------------------------------------------- item 16


def test_check_compatible_takes_models_contracts_metadata_and_paths(tmp_path):
    a, b, other_k = _model(8), _model(8), _model(10)
    pa, pk = tmp_path / "a.pt", tmp_path / "k.pt"
    save_checkpoint(pa, a)
    save_checkpoint(pk, other_k)
    for x, y in [
        (a, b),
        (a.contract(), b),
        (read_contract(pa), b),
        (pa, b.contract()),
        (str(pa), read_contract(pa)),
        (torch.nn.parallel.DataParallel(a), b),  # a wrapped model
    ]:
        check_compatible(x, y)  # one behaviour for every form
    with pytest.raises(IncompatibleModels) as e:
        check_compatible(pa, pk)  # files: named by their paths
    assert str(e.value).startswith(f"{pa} and {pk} are not compatible: feature dimensions")
    with pytest.raises(IncompatibleModels, match=r"^model A and model B are not compatible"):
        check_compatible(a, other_k)
    with pytest.raises(IncompatibleModels, match=r"^old and new are not compatible"):
        check_compatible(a.contract(), other_k, names=("old", "new"))
    with pytest.raises(CheckpointError, match="no such file"):
        check_compatible(tmp_path / "absent.pt", a)
    with pytest.raises(TypeError, match="got int"):
        check_compatible(3, a)


# ----------------------------------------------------------------------------- eval / analyze


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fake_fashion):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_cli(["run", str(TINY), "--out", str(out), "--quiet"], fake_fashion)
    return out


@pytest.mark.slow
def test_eval_and_analyze_name_the_file_of_another_k(run_dir, fake_fashion, tmp_path):
    bad_run = tmp_path / "run"
    shutil.copytree(run_dir, bad_run, ignore=shutil.ignore_patterns("features", "plots"))
    target = bad_run / "hoc" / "seed_7" / "task_1.pt"
    meta = read_contract(target)
    m = build_model(ModelSpec("smallcnn", 1, 11, "simplex", 12))
    m.add_classes(sorted(int(c) for c in meta["contract"]["class_map"]["provider"]), "provider")
    m.add_classes(meta["classes_seen"], "local")
    save_checkpoint(target, m, extra=meta["extra"])
    for cmd in (
        ["eval", str(bad_run), "--quiet"],
        ["analyze", str(bad_run), "--no-plots", "--quiet"],
    ):
        r = run_cli(cmd, fake_fashion, check=False)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert f"checkpoint {target} has num_classes=12 but 10 was expected" in lines[0]
    # A code payload in the same slot is refused by name, through the command line too.
    torch.save({"state_dict": _Evil(str(tmp_path / "compromised.txt"))}, target)
    r = run_cli(["eval", str(bad_run), "--quiet"], fake_fashion, check=False)
    assert f"checkpoint {target}: refusing to unpickle it" in r.stderr
    assert not (tmp_path / "compromised.txt").exists()
