"""protocol.records: the cache location, the run id, what a resume may change, memory files."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from compatkit.config import load_config
from compatkit.data import ImageSet, RehearsalMemory
from compatkit.errors import CheckpointError
from compatkit.protocol.records import (
    NEUTRAL_KEYS,
    cache_dir,
    ensure_run_record,
    load_memory,
    providers_cache,
    read_run_id,
    result_changes,
    save_memory,
)

TINY = Path(__file__).parent / "e2e" / "tiny.yaml"


def test_cache_location_and_its_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPATKIT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert providers_cache() == tmp_path / "mine" / "providers"
    monkeypatch.delenv("COMPATKIT_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "compatkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "compatkit"


def test_result_changes_leave_out_only_the_neutral_keys():
    saved = load_config(TINY)
    neutral = load_config(
        TINY, ["device=cpu", "num_workers_threads=3", "eval.batch_size=5", "name=other"]
    )
    assert result_changes(saved, neutral) == []
    shaping = load_config(TINY, ["train.epochs=3", "providers.1.epochs=4", "seeds=[7,8]"])
    assert result_changes(saved, shaping) == [
        ("providers.1.epochs", 1, 4),
        ("seeds", [7], [7, 8]),
        ("train.epochs", 1, 3),
    ]
    one_less = load_config(TINY, ["providers=[{name: p0, epochs: 1}]", "replacement_tasks=[]"])
    keys = {k for k, _, _ in result_changes(saved, one_less)}
    assert "providers.#" in keys and "providers.1.epochs" in keys
    assert set(NEUTRAL_KEYS) >= {"device", "num_workers_threads"}


def test_processes_sharing_a_run_agree_on_one_id(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: ensure_run_record(tmp_path / "run"), range(16)))
    assert len(ids) == 1 and read_run_id(tmp_path / "run") in ids
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["run.json"]  # no temp files left


def _memory() -> RehearsalMemory:
    images = torch.randint(0, 255, (12, 1, 4, 4), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2] * 4)
    m = RehearsalMemory(2, seed=3)
    m.update(ImageSet(images, labels, ["a", "b", "c"]))
    return m


def test_memory_file_round_trip_and_tamper_check(tmp_path):
    m = _memory()
    path = tmp_path / "memory_0.pt"
    ident = {"role": "memory", "method": "hoc", "seed": 3, "task": 0, "run_id": "abc"}
    save_memory(path, m.state_dict(), ident)
    state, extra = load_memory(path)
    assert extra == ident
    back = RehearsalMemory(1)
    back.load_state_dict(state)
    assert torch.equal(back.as_imageset().images, m.as_imageset().images)
    raw = torch.load(path, weights_only=True)
    raw["tensors"]["images"][0, 0, 0, 0] ^= 1  # one flipped bit, saved as a valid file
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"memory file .*memory_0\.pt: sha256 mismatch"):
        load_memory(path)


def test_a_plain_state_dict_is_not_a_memory_file(tmp_path):
    m = _memory()
    torch.save(m.state_dict(), tmp_path / "memory_0.pt")  # no format, no identity, no digest
    with pytest.raises(CheckpointError, match=r"memory_0\.pt: format None, not a memory file"):
        load_memory(tmp_path / "memory_0.pt")
