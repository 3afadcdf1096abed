"""Tests for compatkit.checkpoint: round trips, atomic saves, refusals, compatibility checks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from compatkit.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    IncompatibleModels,
    check_compatible,
    file_sha256,
    load_checkpoint,
    read_contract,
    save_checkpoint,
)
from compatkit.model import ModelSpec, build_model
from compatkit.simplex import ClassMap


def _simplex(k: int = 8):
    m = build_model(ModelSpec("smallcnn", 1, k - 1, "simplex", k))
    m.add_classes([0, 1, 2])
    m.add_classes([1], space="provider")
    return m


def _etf(seed: int = 3, k: int = 5, d: int = 12):
    m = build_model(ModelSpec("smallcnn", 1, d, "etf", k, etf_seed=seed))
    m.add_classes([0, 1])
    return m


def _learnable():
    m = build_model(ModelSpec("smallcnn", 1, 16, "learnable", 2))
    m.add_classes([3, 0, 4, 1, 2])  # grows the head to 5 rows
    m.head.grow(7)  # spare rows beyond the class map must survive too
    return m


def _learnable_no_junction():
    """The released learnable-head layout: the feature is the backbone's own 128-d output."""
    m = build_model(ModelSpec("smallcnn", 1, 128, "learnable", 0, junction=False))
    m.add_classes([0, 1], space="provider")
    m.add_classes([5])
    return m


def _exercise(m) -> None:
    """Give every tensor non-default values: random weights and BatchNorm running stats."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    m.train()
    m(torch.randn(6, 1, 12, 12, generator=g))


def _batch():
    return torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def saved(tmp_path):
    m = _simplex()
    _exercise(m)
    path = tmp_path / "model.pt"
    save_checkpoint(path, m, extra={"task": 2, "note": "x"})
    return path, m


@pytest.mark.parametrize(
    "make",
    [_simplex, _etf, _learnable, _learnable_no_junction],
    ids=["simplex", "etf", "learnable", "learnable-no-junction"],
)
def test_round_trip_same_outputs(tmp_path, make) -> None:
    m = make()
    _exercise(m)
    path = tmp_path / "ck" / "m.pt"  # parent directory is created
    save_checkpoint(
        path, m, extra={"task": 1, "scores": [1.5, 2], "cfg": {"lr": 1e-3}, "t": (1, 2)}
    )
    loaded, meta = load_checkpoint(path)
    m.eval()
    loaded.eval()
    x = _batch()
    with torch.no_grad():
        a, b = m(x), loaded(x)
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    assert loaded.contract() == m.contract()
    assert loaded.class_map.local == m.class_map.local
    assert meta["contract"] == m.contract()
    assert meta["classes_seen"] == sorted(m.class_map.local)
    assert meta["extra"] == {"task": 1, "scores": [1.5, 2], "cfg": {"lr": 1e-3}, "t": [1, 2]}
    assert meta["format"] == FORMAT and meta["format_version"] == FORMAT_VERSION
    assert read_contract(path) == meta
    # The file is loadable with the safe loader directly (nothing but plain types and tensors).
    raw = torch.load(path, weights_only=True)
    assert set(raw["state_dict"]) == set(m.state_dict())


def test_learnable_head_rows_restored(tmp_path) -> None:
    m = _learnable()
    save_checkpoint(tmp_path / "l.pt", m)
    loaded, meta = load_checkpoint(tmp_path / "l.pt")
    assert loaded.head.num_rows == 7 == meta["contract"]["head_rows"]
    assert meta["classes_seen"] == [0, 1, 2, 3, 4]


def test_atomic_save_keeps_old_file_on_failure(saved, monkeypatch) -> None:
    path, m = saved
    before = file_sha256(path)

    def boom(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, m)
    assert file_sha256(path) == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    monkeypatch.undo()
    load_checkpoint(path)  # still a good checkpoint


def test_save_leaves_only_the_target(tmp_path) -> None:
    m = _etf()
    save_checkpoint(tmp_path / "a.pt", m)
    save_checkpoint(tmp_path / "a.pt", m)  # overwrite in place
    assert os.listdir(tmp_path) == ["a.pt"]


def test_extra_must_be_plain_data(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"extra\['bad'\] is a object"):
        save_checkpoint(tmp_path / "x.pt", _etf(), extra={"bad": object()})
    with pytest.raises(ValueError, match="keys must be strings"):
        save_checkpoint(tmp_path / "x.pt", _etf(), extra={1: 2})
    assert not (tmp_path / "x.pt").exists()


def test_refuses_missing_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_refuses_truncated_file(saved) -> None:
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt: cannot be read.*truncated or corrupt"):
        load_checkpoint(path)


def test_refuses_random_bytes(tmp_path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"noise\.pt: cannot be read"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        read_contract(path)


def test_refuses_plain_state_dict(tmp_path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(_simplex().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a compatkit checkpoint.*state dict"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a compatkit checkpoint"):
        load_checkpoint(path)


@dataclass
class _Payload:
    x: int = 1


def test_refuses_arbitrary_objects(tmp_path) -> None:
    path = tmp_path / "pickle.pt"
    torch.save({"format": FORMAT, "obj": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(path)


def _resave(path, edit) -> None:
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)


def test_refuses_tampered_weight(saved) -> None:
    path, _ = saved

    def edit(raw):
        name = next(k for k in raw["state_dict"] if k.endswith("junction.weight"))
        raw["state_dict"][name][0, 0] += 1e-3

    _resave(path, edit)
    with pytest.raises(CheckpointError, match=r"sha256 mismatch.*tampered with or corrupted"):
        load_checkpoint(path)


def test_refuses_tampered_contract(saved) -> None:
    path, _ = saved
    _resave(path, lambda raw: raw["contract"]["class_map"]["local"].update({"0": 3}))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        read_contract(path)


def test_refuses_newer_format(saved) -> None:
    path, _ = saved
    _resave(path, lambda raw: raw.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="format version 2 is newer"):
        load_checkpoint(path)


def test_refuses_weights_that_do_not_fit(saved) -> None:
    # A consistent file (digest recomputed) whose state dict lacks a tensor: strict load refuses.
    from compatkit.checkpoint import format as ck

    path, _ = saved
    raw = torch.load(path, weights_only=True)
    raw["state_dict"].pop(next(iter(raw["state_dict"])))
    raw["sha256"] = ck._digest(raw, raw["state_dict"])
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(path)


def test_expect_mismatch(tmp_path) -> None:
    path = tmp_path / "l.pt"
    save_checkpoint(path, _learnable())
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, expect={"head": "simplex", "feat_dim": 15})
    assert str(e.value) == f"checkpoint {path} has head='learnable' but 'simplex' was expected"
    with pytest.raises(CheckpointError, match="feat_dim=16 but 15 was expected"):
        load_checkpoint(path, expect={"feat_dim": 15})
    with pytest.raises(CheckpointError, match="not a contract key"):
        load_checkpoint(path, expect={"colour": "red"})
    model, _ = load_checkpoint(path, expect={"head": "learnable", "feat_dim": 16})
    assert model.spec.head == "learnable"


def test_check_compatible_accepts_matching_contracts(tmp_path) -> None:
    a, b = _simplex(), _simplex()
    b.add_classes([3, 4])  # more classes, same rows for the shared ones
    check_compatible(a.contract(), b.contract())
    save_checkpoint(tmp_path / "a.pt", a)
    save_checkpoint(tmp_path / "b.pt", b)
    check_compatible(read_contract(tmp_path / "a.pt"), read_contract(tmp_path / "b.pt"))
    # Learnable heads: rows are free, only the dimension must match.
    la, lb = _learnable(), build_model(ModelSpec("smallcnn_wide", 1, 16, "learnable", 3))
    lb.add_classes([4, 3])
    check_compatible(la.contract(), lb.contract())
    # A backbone change alone (a replacement by a bigger model) is fine.
    wide = build_model(ModelSpec("smallcnn_wide", 1, 7, "simplex", 8), a.class_map.copy())
    check_compatible(a.contract(), wide.contract())


def _contract(head="simplex", k=8, d=7, seed=0, local=None, provider=None, channels=1) -> dict:
    return {
        "backbone": "smallcnn",
        "in_channels": channels,
        "feat_dim": d,
        "head": head,
        "num_classes": k,
        "etf_seed": seed,
        "head_rows": k,
        "class_map": ClassMap(k, local or {}, provider or {}).to_dict(),
    }


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (_contract(), _contract(k=9, d=8), "feature dimensions differ"),
        (_contract(), _contract(channels=3), "input channels differ"),
        (_contract(), _contract(head="etf"), "fixed heads of different kinds"),
        (_contract("etf", 5, 12), _contract("etf", 6, 12), "different K"),
        (_contract("etf", 5, 12, seed=1), _contract("etf", 5, 12, seed=2), "different seeds"),
        (_contract(local={3: 4}), _contract(local={3: 2}), "local class 3 sits on row 4.*row 2"),
        (_contract(local={0: 7}), _contract(provider={7: 7}), "row 7 holds local class 0"),
    ],
)
def test_check_compatible_refusals(a, b, match) -> None:
    with pytest.raises(IncompatibleModels, match=match):
        check_compatible(a, b, names=("old", "new"))
    assert issubclass(IncompatibleModels, ValueError)


def test_check_compatible_names_models() -> None:
    with pytest.raises(IncompatibleModels, match="old and new are not compatible"):
        check_compatible(_contract(), _contract(k=9, d=8), names=("old", "new"))


def test_file_sha256(tmp_path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_contract_lacking_a_field_is_refused(saved) -> None:
    """A consistent file (digest recomputed) whose contract lacks ``junction`` cannot say
    whether its feature is the junction's or the backbone's: refused, naming the field."""
    from compatkit.checkpoint.format import _digest

    path, _ = saved
    raw = torch.load(path, weights_only=True)
    assert raw["contract"].pop("junction") is True
    raw["sha256"] = _digest(raw, raw["state_dict"])
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="its contract lacks 'junction'"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="its contract lacks 'junction'"):
        read_contract(path)


def test_junction_in_the_contract_and_compatibility(tmp_path) -> None:
    bare = _learnable_no_junction()
    save_checkpoint(tmp_path / "b.pt", bare)
    loaded, meta = load_checkpoint(tmp_path / "b.pt")
    assert loaded.junction is None and meta["contract"]["junction"] is False
    assert "junction.weight" not in loaded.state_dict()
    with torch.no_grad():
        x = _batch()
        torch.testing.assert_close(loaded.eval().features(x), loaded.backbone(x))
    # Same dimension with or without a junction: a learnable pair is compared, as before.
    with_junction = build_model(ModelSpec("smallcnn", 1, 128, "learnable", 2))
    check_compatible(bare.contract(), with_junction.contract())
    # Still refused: different feature sizes, and fixed heads that disagree.
    with pytest.raises(IncompatibleModels, match="feature dimensions differ"):
        check_compatible(bare.contract(), _learnable().contract())
    with pytest.raises(IncompatibleModels, match="different K"):
        check_compatible(_contract("etf", 5, 12), {**_contract("etf", 6, 12), "junction": True})
    # A stored contract lacking the field equals today's default.
    check_compatible(_contract(), {**_contract(), "junction": True})
