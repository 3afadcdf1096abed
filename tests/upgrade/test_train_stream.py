"""``compatkit train`` on files as they come: held in memory or streamed from the files by
worker processes, chosen by the memory budget or by a flag, with the same trained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compatkit.checkpoint import load_checkpoint
from compatkit.cli import main as cli_main
from compatkit.errors import ConfigError, DataError
from compatkit.runtime.log import RunLog
from compatkit.upgrade.train import TrainOptions, train_model

from .folders import write_varied_folder

FAST = {"epochs": 1, "batch_size": 16, "device": "cpu", "image_size": 24}


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> Path:
    return write_varied_folder(
        tmp_path_factory.mktemp("varied"), {"ant": 20, "bee": 20, "cat": 20}, 11
    )


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> tuple[Path, Path]:
    root = write_varied_folder(tmp_path_factory.mktemp("broken"), {"ant": 12, "bee": 12}, 12)
    bad = root / "bee" / "000_truncated.jpg"
    bad.write_bytes((root / "bee" / "001.jpg").read_bytes()[:40])
    return root, bad


def _train(data: Path, out: Path, **opts) -> tuple[dict, list[str]]:
    lines: list[str] = []
    log = RunLog(None, quiet=True)
    log.info = lines.append  # the lines the command would print
    res = train_model(str(data), out, TrainOptions(**{**FAST, **opts}), log=log)
    return res.extra, lines


def test_streamed_training_gives_the_in_memory_weights(varied, tmp_path) -> None:
    """Same files, seed and options: the two paths draw the same batches and augmentations,
    so one epoch ends on the same weights, bit for bit (on the CPU)."""
    mem, lines_m = _train(varied, tmp_path / "m.pt", loading="memory", val_fraction=0.2)
    st, lines_s = _train(varied, tmp_path / "s.pt", loading="stream", workers=2, val_fraction=0.2)
    assert mem["data"]["loading"] == "memory" and st["data"]["loading"] == "stream"
    assert any("in memory (--in-memory" in x for x in lines_m)
    assert any("streamed from its files (--stream" in x for x in lines_s)
    for key in ("images", "held_out", "skipped"):
        assert mem["data"][key] == st["data"][key]
    assert mem["normalize"] == st["normalize"] and mem["losses"] == st["losses"]
    assert mem["val_accuracy"] == st["val_accuracy"] and len(st["val_accuracy"]) == 1
    a, b = load_checkpoint(tmp_path / "m.pt")[0], load_checkpoint(tmp_path / "s.pt")[0]
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name


def test_automatic_choice_follows_the_budget(varied, tmp_path) -> None:
    need = 60 * 3 * 24 * 24  # images x C x H x W bytes, decoded
    small, lines = _train(varied, tmp_path / "a.pt", memory_budget=need - 1)
    assert small["data"]["loading"] == "stream"
    assert any("over the in-memory budget" in x for x in lines)
    roomy, lines = _train(varied, tmp_path / "b.pt", memory_budget=f"{need / 2**20:.4f}M")
    assert roomy["data"]["loading"] == "memory"
    assert any("within the in-memory budget" in x for x in lines)
    assert _train(varied, tmp_path / "c.pt")[0]["data"]["loading"] == "memory"  # 100 KiB
    assert small["losses"] == roomy["losses"]
    with pytest.raises(ConfigError, match="memory_budget must be a size"):
        _train(varied, tmp_path / "d.pt", memory_budget="lots")


@pytest.mark.parametrize("loading", ["memory", "stream"])
def test_unreadable_file_skipped_and_named_or_refused(broken, loading, tmp_path) -> None:
    root, bad = broken
    x, lines = _train(root, tmp_path / "m.pt", loading=loading)
    assert x["data"]["skipped"] == 1 and x["data"]["images"] == 24
    assert any(str(bad) in line for line in lines)
    with pytest.raises(DataError, match=r"000_truncated\.jpg"):
        _train(root, tmp_path / "s.pt", loading=loading, strict=True)


def test_anchors_streamed_like_in_memory(varied, tmp_path) -> None:
    v1 = tmp_path / "v1.pt"
    _train(varied, v1)
    runs = {}
    for loading in ("memory", "stream"):
        out = tmp_path / f"v2-{loading}.pt"
        opts = TrainOptions(**{**FAST, "loading": loading, "anchor": str(varied)})
        x = train_model(str(varied), out, opts, old=v1).extra
        runs[loading] = (x, load_checkpoint(out)[0])
    (xm, m), (xs, s) = runs["memory"], runs["stream"]
    assert xm["losses"] == xs["losses"] and xm["loss_parts"] == xs["loss_parts"]
    assert "anchor" in xm["loss_parts"][0]
    for name, p in m.state_dict().items():
        assert torch.equal(p, s.state_dict()[name]), name


def test_cli_streams_skips_and_refuses(broken, tmp_path, capsys) -> None:
    root, bad = broken
    out = tmp_path / "m.pt"
    args = ["train", str(root), "--out", str(out), "--epochs", "1", "--batch-size", "16"]
    args += ["--image-size", "24", "--device", "cpu", "--workers", "1"]
    assert cli_main([*args, "--memory-budget", "1K"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith(f"wrote {out}: 2 classes, 24 images (streamed, 1 unreadable")
    assert str(bad) in cap.err and "over the in-memory budget" in cap.err
    meta = load_checkpoint(out)[1]["extra"]
    assert meta["data"]["loading"] == "stream" and meta["options"]["memory_budget"] == "1K"
    assert cli_main([*args, "--force", "--in-memory", "--memory-budget", "1K"]) == 0
    assert "24 images (in memory, 1 unreadable skipped)" in capsys.readouterr().out
    assert cli_main([*args, "--force", "--stream", "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("compatkit train: error: ") and "000_truncated.jpg" in err[-1]
    with pytest.raises(SystemExit) as e:
        cli_main([*args, "--stream", "--in-memory"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
