"""`compatkit check` through the real command line: exit 0 on a compatible pair of real
checkpoints, 1 on an incompatible pair, 2 on bad input; --json; --record into an index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compatkit.upgrade.train import TrainOptions, train_model

from ..upgrade.folders import write_folder
from .cli import run_cli

CLASSES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Real checkpoints, trained here in a few seconds on noisy tiny folders.

    Compatible pair (Theorem 1 of Biondi et al. at work): two d-Simplex models with K = 3,
    each trained from scratch with cross-entropy, OLD on 8 images per class (it overfits
    them), NEW on 80. Both put each class at its fixed vertex; NEW's classes are tighter, so
    its queries find OLD's gallery better than OLD's own: recall@1 55.56 -> 67.78, mAP
    58.19 -> 68.37, template 63.33 -> 66.67 on these 90 queries when written (seed 3; the
    same recipe passed in 5 of 6 seeds). Incompatible pair: a K = 8 d-Simplex model and a
    learnable-head model of the same dimension trained from scratch with another seed:
    nothing ties their spaces, cross-model search is at chance.
    """
    base = tmp_path_factory.mktemp("check")
    d = {
        "small": write_folder(base / "small", dict.fromkeys(CLASSES, 8), 11, noise=200),
        "big": write_folder(base / "big", dict.fromkeys(CLASSES, 80), 12, noise=200),
        "query": write_folder(base / "query", dict.fromkeys(CLASSES, 30), 13, noise=200),
        "gallery": write_folder(base / "gallery", dict.fromkeys(CLASSES, 30), 14, noise=200),
    }
    fast = {"device": "cpu", "seed": 3}
    m = {k: base / f"{k}.pt" for k in ("old", "new", "old8", "other8")}
    train_model(
        str(d["small"]), m["old"], TrainOptions(**fast, epochs=60, batch_size=24, num_classes=3)
    )
    train_model(
        str(d["big"]),
        m["new"],
        TrainOptions(**fast, epochs=10, batch_size=32, init="scratch", method="cores"),
        old=m["old"],
    )
    train_model(
        str(d["small"]), m["old8"], TrainOptions(**fast, epochs=20, batch_size=24, num_classes=8)
    )
    train_model(
        str(d["big"]),
        m["other8"],
        TrainOptions(
            device="cpu", seed=7, epochs=3, batch_size=32, head="learnable", num_classes=8
        ),
    )
    return {**d, **m}


def _check(m: dict, old: str, new: str, fake_fashion, *extra: str):
    args = ["check", str(m[old]), str(m[new]), "--query", str(m["query"])]
    args += ["--gallery", str(m["gallery"]), "--device", "cpu", *extra]
    return run_cli(args, fake_fashion, check=False)


def test_compatible_pair_exits_0(models, fake_fashion) -> None:
    r = _check(models, "old", "new", fake_fashion)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: COMPATIBLE" in r.stdout
    assert "decided on recall@1, scope all: all: recall@1 new/old" in r.stdout


def test_incompatible_pair_exits_1_and_json_says_why(models, fake_fashion) -> None:
    r = _check(models, "old8", "other8", fake_fashion, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    v = json.loads(r.stdout)
    t = v["groups"]["all"]["metrics"]["recall@1"]
    assert v["compatible"] is False and t["strict"] is False and t["new_old"] < t["old_old"]
    assert v["new"]["head"] == "learnable" and v["contract"]["ok"]
    # Another K cannot share the gallery at all: exit 1 without a matrix.
    r = _check(models, "old", "old8", fake_fashion)
    assert r.returncode == 1 and "feature dimensions differ (OLD 2, NEW 7)" in r.stdout


def test_bad_input_exits_2_with_one_line(models, fake_fashion, tmp_path) -> None:
    q = ["--query", str(models["query"]), "--gallery", str(models["gallery"])]
    cases = [
        (["check", str(tmp_path / "missing.pt"), str(models["new"]), *q], "no such file"),
        (
            ["check", str(models["old"]), str(models["new"]), "--metric", "recall@5", *q],
            "invalid choice",
        ),
        (
            [
                "check",
                str(models["old"]),
                str(models["new"]),
                "--query",
                str(tmp_path / "none"),
                "--gallery",
                str(models["gallery"]),
            ],
            "no such folder",
        ),
    ]
    for args, why in cases:
        r = run_cli(args, fake_fashion, check=False)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert why in r.stderr and r.stdout == ""


@pytest.mark.slow
def test_record_into_an_index(models, fake_fashion, tmp_path) -> None:
    idx = tmp_path / "idx"
    build = ["index", "build", str(models["old"]), str(models["gallery"]), "--out", str(idx)]
    run_cli([*build, "--device", "cpu"], fake_fashion)
    r = _check(models, "old", "new", fake_fashion, "--record", str(idx), "--quiet")
    assert r.returncode == 0, r.stderr
    from compatkit.checkpoint import read_contract
    from compatkit.upgrade.index import Gallery, load_checks

    new_sha = read_contract(models["new"])["sha256"]
    with Gallery.open(idx) as g:
        assert [c["new"]["fingerprint"] for c in load_checks(g)] == [new_sha]
    r = _check(models, "old", "new", fake_fashion, "--record", str(tmp_path / "no-index"))
    assert r.returncode == 2 and "no-index" in r.stderr and r.stdout == ""  # before the run
