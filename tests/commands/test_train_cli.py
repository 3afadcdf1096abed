"""`compatkit train` through the real command line: options from flags, --config and --set,
a successor with a method option, refusals as one line with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from compatkit.checkpoint import load_checkpoint

from ..upgrade.folders import tiny_folders
from .cli import run_cli


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return tiny_folders(tmp_path_factory.mktemp("train-cli"))


@pytest.mark.slow
def test_first_model_then_successor(folders, fake_fashion, tmp_path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text("epochs: 3\nbatch_size: 32\nnum_classes: 8\nmethod_options: {}\n")
    v1 = tmp_path / "v1.pt"
    args = ["train", str(folders["v1"]), "--out", str(v1), "--config", str(cfg)]
    r = run_cli([*args, "--set", "epochs=2", "--epochs", "1", "--device", "cpu"], fake_fashion)
    assert r.stdout.startswith(f"wrote {v1}: 3 classes, 72 images (in memory), cores")
    meta = load_checkpoint(v1)[1]
    opts = meta["extra"]["options"]
    assert opts["epochs"] == 1 and opts["batch_size"] == 32  # flag > --set > file
    assert meta["contract"]["num_classes"] == 8 and len(meta["extra"]["losses"]) == 1

    r = run_cli(args, fake_fashion, check=False)  # the file exists
    assert r.returncode == 2 and "pass --force" in r.stderr

    v2 = tmp_path / "v2.pt"
    r = run_cli(
        [
            "train",
            str(folders["v2new"]),
            "--old",
            str(v1),
            "--out",
            str(v2),
            "--epochs",
            "1",
            "--set",
            "hoc.lam=0.5",
            "--set",
            "hoc.form=reference",
            "--device",
            "cpu",
            "--quiet",
        ],
        fake_fashion,
    )
    assert "5 classes" in r.stdout and f"successor of {v1}" in r.stdout
    x = load_checkpoint(v2)[1]["extra"]
    assert x["method"] == "hoc" and x["method_options"] == {
        "lam": 0.5,
        "mu": 10.0,
        "form": "reference",
    }


@pytest.mark.slow
def test_refusals_are_one_line(folders, fake_fashion, tmp_path) -> None:
    base = ["train", str(folders["v1"]), "--out", str(tmp_path / "x.pt")]
    for extra, why in (
        (["--set", "epoch=3"], "unknown config key epoch"),
        (["--set", "nope.lam=3"], "'nope' is not a method"),
        (["--method", "er", "--head", "simplex"], "method 'er' trains a learnable head"),
    ):
        r = run_cli([*base, *extra], fake_fashion, check=False)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and why in r.stderr, r.stderr
    assert not (tmp_path / "x.pt").exists()
