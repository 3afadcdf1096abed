"""The gate on photo folders: a foreign OLD, unreadable files left out of both models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from compatkit.checkpoint import save_checkpoint
from compatkit.errors import DataError
from compatkit.model import ModelSpec, build_model
from compatkit.upgrade.export import export_checkpoint
from compatkit.upgrade.gate import render, run_check


def _model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    m = build_model(ModelSpec("smallcnn", 1, 7, "simplex", 8))
    m.add_classes(list(range(3)), "local")
    m.class_map.set_names({0: "ant", 1: "bee", 2: "cat"})
    pre = {"input_size": [1, 28, 28], "resize": 28, "mean": [0.3], "std": [0.3]}
    save_checkpoint(path, m.eval(), extra={"preprocess": pre})
    return path


def test_unreadable_files_leave_both_sides_and_a_foreign_old_works(tiny, tmp_path) -> None:
    q = shutil.copytree(tiny["query"], tmp_path / "q")
    (q / "ant" / "000.png").write_bytes(b"broken")
    old, new = _model(tmp_path / "old.pt", 0), _model(tmp_path / "new.pt", 1)
    said: list[str] = []
    v = run_check(str(old), str(new), str(q), str(tiny["gallery"]), device="cpu", log=said.append)
    assert v["unreadable_files"] == 1 and v["query"]["images"] == 59
    assert any("000.png: not a readable image" in s for s in said)
    with pytest.raises(DataError, match=r"000\.png: not a readable image"):
        run_check(str(old), str(new), str(q), str(tiny["gallery"]), device="cpu", strict=True)
    foreign = export_checkpoint(old, "onnx", tmp_path / "old.onnx").path
    f = run_check(str(foreign), str(new), str(q), str(tiny["gallery"]), device="cpu")
    assert f["old"]["format"] == "onnx" and f["old"]["classes"] == []
    same = v["groups"]["all"]["metrics"]["recall@1"]
    got = f["groups"]["all"]["metrics"]["recall@1"]
    assert got == pytest.approx(same, abs=1e-6) and f["compatible"] == v["compatible"]
    assert "note" in f and "verdict:" in render(f)
