"""Your model, your images, end to end through the real command line: a folder of JPEGs of
mixed sizes, a TorchScript v1 compatkit did not train, its successor, the gate, embed and
export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = {"ant": 0, "bee": 1, "cat": 2}


def _jpegs(root: Path, per_class: int, seed: int) -> Path:
    """Photos of mixed sizes and modes: class k is brighter in channel k."""
    rng = np.random.default_rng(seed)
    for name, k in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(36, 90, size=2))
            a = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
            a[:, :, k] += 150
            img = Image.fromarray(a)
            if i % 5 == 4:
                img = img.convert("L")  # a grayscale photo among colour ones
            img.save(root / name / f"{i:02d}.jpg", quality=90)
    return root


def ck(*args: str, cwd: Path, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "compatkit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode in ok, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.slow
def test_foreign_v1_successor_gate_embed_export(tmp_path: Path) -> None:
    _jpegs(tmp_path / "dir", 12, 0)
    _jpegs(tmp_path / "q", 4, 1)
    _jpegs(tmp_path / "g", 6, 2)
    ck("train", "dir", "--out", "v1.pt", "--image-size", "32", "--epochs", "1", cwd=tmp_path)
    # v1 as a deployed model compatkit did not train: a TorchScript file and its JSON.
    ck("export", "v1.pt", "--format", "torchscript", "--out", "M.pt", cwd=tmp_path)
    meta = json.loads((tmp_path / "M.json").read_text())
    assert meta["input_size"] == [3, 32, 32] and meta["resize"] == 32
    ck("train", "dir", "--old", "M.pt", "--out", "v2.pt", "--epochs", "1", cwd=tmp_path)
    r = ck(
        "check", "M.pt", "v2.pt", "--query", "q", "--gallery", "g", "--json",
        cwd=tmp_path, ok=(0, 1),
    )  # fmt: skip
    verdict = json.loads(r.stdout)
    assert r.returncode == (0 if verdict["compatible"] else 1)
    assert verdict["old"]["format"] == "torchscript" and verdict["query"]["images"] == 12
    ck("embed", "M.pt", "dir", "--out", "m", cwd=tmp_path)
    assert np.load(tmp_path / "m.npy").shape == (36, 15)
    # export v2 for serving: ONNX features equal compatkit's within 1e-4
    ck("export", "v2.pt", "--format", "onnx", "--out", "v2.onnx", cwd=tmp_path)
    ck("embed", "v2.pt", "dir", "--out", "a", cwd=tmp_path)
    ck("embed", "v2.onnx", "dir", "--out", "b", "--workers", "2", cwd=tmp_path)
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == b.shape == (36, 15)
    assert float(np.abs(a - b).max()) <= 1e-4
    assert (tmp_path / "a.ids.txt").read_text() == (tmp_path / "b.ids.txt").read_text()
    # v2 is a compatkit model: its successor keeps its K and vertices (no backfill)
    ck("train", "dir", "--old", "v2.pt", "--out", "v3.pt", "--epochs", "1", cwd=tmp_path)
    v2 = json.loads(ck("check", "v2.pt", "v3.pt", "--query", "q", "--gallery", "g", "--json",
                       cwd=tmp_path, ok=(0, 1)).stdout)  # fmt: skip
    assert v2["contract"]["ok"]


@pytest.mark.slow
def test_embed_files_skips_broken_files_or_refuses_them(tmp_path: Path) -> None:
    from compatkit.checkpoint import save_checkpoint
    from compatkit.model import ModelSpec, build_model

    _jpegs(tmp_path / "dir", 3, 0)
    (tmp_path / "dir" / "bee" / "01.jpg").write_bytes(b"\xff\xd8 broken")
    model = build_model(ModelSpec("smallcnn", 3, 7, "simplex", 8))
    pre = {"input_size": [3, 24, 24], "resize": 28, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_checkpoint(tmp_path / "m.pt", model, extra={"preprocess": pre})
    r = ck("embed", "m.pt", "dir", "--out", "f.npy", "--dtype", "float16", cwd=tmp_path)
    assert "1 unreadable file(s) skipped" in r.stdout
    feats = np.load(tmp_path / "f.npy")
    assert feats.shape == (8, 7) and feats.dtype == np.float16
    ids = (tmp_path / "f.ids.txt").read_text().splitlines()
    assert len(ids) == 8 and "bee/01.jpg" not in ids and ids[0] == "ant/00.jpg"
    assert np.load(tmp_path / "f.labels.npy").tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["unreadable"]["count"] == 1 and doc["classes"] == list(CLASSES)
    assert np.allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=1e-2)
    r = ck("embed", "m.pt", "dir", "--out", "g", "--strict", cwd=tmp_path, ok=(2,))
    assert "01.jpg: not a readable image" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "g.npy").exists()
    r = ck("embed", "m.pt", "dir", "--out", "f.npy", cwd=tmp_path, ok=(2,))
    assert "exists; pass --force" in r.stderr
