"""Every number and range of a configuration is checked up front, one line naming the key.

Issue 10, items 6 (non-finite values) and 7 (ranges, YAML, encodings, missing extras). The
library tests call ``load_config``/``make_plan``; the command-line tests check that the
refusal reaches the user as exactly one line with exit status 2.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from compatkit.config import (
    MAX_CLASSES,
    MAX_EPOCHS,
    ConfigError,
    load_config,
    max_threads,
)
from compatkit.errors import CompatkitError
from compatkit.protocol.plan import make_plan

from .commands.cli import TINY, run_cli
from .conftest import write_fake_fashion


@pytest.fixture(autouse=True)
def _data(fake_fashion, monkeypatch):
    monkeypatch.setenv("COMPATKIT_FASHION_MNIST", str(fake_fashion))


def _one_line_refusal(r, *needles: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- item 6


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=nan", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("train.min_lr=.inf", "train.min_lr"),
        ("train.weight_decay=inf", "train.weight_decay"),
        ("train.momentum=-.inf", "train.momentum"),
        ("train.lr=1e999", "train.lr"),  # float() gives inf
        ("providers.0.lr=nan", "providers[0].lr"),
        ("providers.1.lr=-inf", "providers[1].lr"),
        ("method_options.hoc.lam=nan", "method_options.hoc.lam"),
        ("method_options.hoc.mu=.inf", "method_options.hoc.mu"),
        ("method_options.er={}", None),  # accepted: no option given
    ],
)
def test_non_finite_numbers_refused_at_every_level(override, key):
    if key is None:
        load_config(TINY, [override])
        return
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [override])
    assert str(e.value).startswith(f"{key}: must be a finite number")


def test_non_finite_in_free_form_values_refused():
    # method_options values are typed by the method's Config; floats inside any other
    # free-form (Any) value are checked too, so a field added later is covered.
    from typing import Any

    from compatkit.config import coerce

    with pytest.raises(ConfigError, match=r"opts.a\[1\]: must be a finite"):
        coerce({"a": [1.0, float("nan")]}, Any, "opts")
    with pytest.raises(ConfigError, match=r"opts.b: .* does not fit in a 64-bit"):
        coerce({"b": 2**64}, Any, "opts")


def test_hoc_lam_string_is_a_typed_error_not_a_type_error():
    with pytest.raises(ConfigError, match=r"method_options.hoc.lam: expected a number, got 'x'"):
        load_config(TINY, ["method_options.hoc.lam=x"])


def test_cli_refuses_nan_in_one_line(fake_fashion, tmp_path):
    r = run_cli(
        ["run", str(TINY), "--set", "train.lr=nan", "--out", str(tmp_path / "r")],
        fake_fashion,
        check=False,
    )
    _one_line_refusal(r, "train.lr", "finite")
    assert not (tmp_path / "r" / "hoc").exists()  # refused before anything trained


def test_diverging_loss_stops_the_run_in_one_line(fake_fashion, tmp_path):
    """A learning rate of 1e30 sends the loss to NaN within a step: the run stops, naming the
    task, the step and the last finite loss, and saves nothing of that task."""
    out = tmp_path / "r"
    r = run_cli(
        ["run", str(TINY), "--set", "train.lr=1e30", "--out", str(out), "--quiet"],
        fake_fashion,
        check=False,
    )
    line = _one_line_refusal(r, "seed 7 task", "non-finite at step", "train.lr")
    assert "last finite loss was" in line or "not finite from the first step" in line
    assert not (out / "metrics.json").exists()


# ----------------------------------------------------------------------------- item 7


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("local.data.per_class=-3", "local.data.per_class must be >= 1"),
        ("local.data.per_class=0", "local.data.per_class must be >= 1"),
        ("providers.0.data.per_class=-1", "providers[0].data.per_class"),
        ("local.data.classes=[]", "local.data.classes is empty"),
        ("eval.gallery.classes=[]", "eval.gallery.classes is empty"),
        ("eval.query.classes=[4, 4]", "eval.query.classes lists a class twice"),
        ("local.data.classes=[-1, 0]", "local.data.classes: labels are >= 0"),
        ("seeds=[7, 7]", "seeds: 7 is listed twice"),
        ("train.momentum=5", "train.momentum must lie in [0, 1)"),
        ("train.momentum=1", "train.momentum must lie in [0, 1)"),
        ("train.momentum=-0.1", "train.momentum must lie in [0, 1)"),
        ("train.warmup_epochs=2", "train.warmup_epochs=2 is longer than the 1 epochs"),
        ("device=cudaXYZ", "device must be auto, cpu, cuda or cuda:N"),
        ("device='cuda:'", "device must be"),
        ("device=cuda:-1", "device must be"),
        ("num_workers_threads=-1", "num_workers_threads must lie in"),
        (f"num_workers_threads={max_threads() + 1}", "num_workers_threads must lie in"),
        (f"train.epochs={MAX_EPOCHS + 1}", "train.epochs=10001 is more than 10,000 epochs"),
        ("providers.1.epochs=1000000000", "providers[1].epochs=1000000000 is more than"),
        ("eval.query.classes=[0, 1]", "eval.query.classes [0, 1]: none of them is in"),
        (f"model.num_classes={MAX_CLASSES + 1}", "model.num_classes (K) must lie in"),
        ("model.num_classes=1000000000", "model.num_classes (K) must lie in"),
        ("model.feat_dim=100000", "model.feat_dim must be <="),
        ("model.num_classes=100000000000000000000", "does not fit in a 64-bit integer"),
        ("data_seed=-100000000000000000000", "data_seed: -1000"),
        ("seeds=[18446744073709551616]", "seeds[0]: 18446744073709551616 does not fit"),
        ("train.lr=1" + "0" * 400, "train.lr: 1000"),
        ("name=../escape", "name: '../escape' cannot name a file or folder"),
        ("providers.0.name=a/b", "providers[0].name"),
        ("local.data.dataset=nosuch", "local.data.dataset: unknown dataset 'nosuch'"),
        ("eval.query.split=val", "eval.query.split must be one of"),
        ("model.backbone=nosuch", "model.backbone: unknown backbone 'nosuch'"),
        ("providers.1.backbone='timm:'", "providers[1].backbone: 'timm:' names no model"),
    ],
)
def test_ranges_refused_up_front_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_thread_limit_follows_the_machine(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert max_threads() == 64
    assert load_config(TINY, ["num_workers_threads=64"]).num_workers_threads == 64
    with pytest.raises(ConfigError, match=r"0\.\.64 .*16 hardware threads.*got 65"):
        load_config(TINY, ["num_workers_threads=65"])
    assert load_config(TINY, [f"train.epochs={MAX_EPOCHS}"]).train.epochs == MAX_EPOCHS


@pytest.mark.parametrize(
    "override, needle",
    [
        ("num_workers_threads=1000", "num_workers_threads must lie in 0.."),
        ("train.epochs=1000000000", "train.epochs=1000000000 is more than 10,000 epochs"),
        ("eval.query.classes=[0, 1]", "eval.query.classes [0, 1]: none of them is in"),
    ],
)
def test_issue_inputs_are_one_line_refusals(override, needle, tmp_path, fake_fashion):
    out = tmp_path / "run"
    r = run_cli(["run", str(TINY), "--set", override, "--out", str(out)], fake_fashion, False)
    _one_line_refusal(r, needle)
    assert not out.exists()


def test_query_classes_absent_from_a_whole_gallery_are_refused(tmp_path, fake_fashion):
    """The gallery of all its dataset's classes (no class list): known only from the data."""
    four = write_fake_fashion(tmp_path / "four", n_classes=4)  # classes 0..3
    cfg = load_config(
        TINY, ["eval.gallery.classes=null", f"eval.gallery.root={four}", "eval.query.classes=[5]"]
    )
    with pytest.raises(ConfigError, match=r"eval.query: none of its classes \[5\] is in"):
        make_plan(cfg)


def test_zero_threads_keeps_meaning_torch_default():
    assert load_config(TINY, ["num_workers_threads=0"]).num_workers_threads == 0


def test_cuda_index_beyond_the_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    load_config(TINY, ["device=cuda:1"])
    with pytest.raises(ConfigError, match="device 'cuda:2': this machine has 2 CUDA"):
        load_config(TINY, ["device=cuda:2"])


@pytest.mark.parametrize("pad", [28, 40, 10**9])
def test_pad_as_large_as_the_image_refused_at_plan_time(pad):
    cfg = load_config(TINY, [f"train.pad={pad}"])
    with pytest.raises(ConfigError, match=rf"train.pad={pad} must be smaller than the 28x28"):
        make_plan(cfg)
    make_plan(load_config(TINY, ["train.pad=27"]))  # the largest pad that still crops


def test_duplicate_yaml_keys_refused_with_line(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(TINY.read_text() + "train: {epochs: 5}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    first = next(
        i for i, ln in enumerate(TINY.read_text().splitlines(), 1) if ln.startswith("train")
    )
    last = len(TINY.read_text().splitlines()) + 1
    assert str(e.value) == (
        f"config file {p}: duplicate key 'train' at line {last} (first at line {first})"
    )
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\n")
    with pytest.raises(
        ConfigError, match=re.escape("duplicate key 'epochs' at line 4 (first at line 2)")
    ):
        load_config(nested)
    with pytest.raises(ConfigError, match="--set method_options: duplicate key 'hoc'"):
        load_config(TINY, ["method_options={hoc: {}, hoc: {lam: 1}}"])


def test_non_utf8_config_names_the_file(fake_fashion, tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(TINY.read_bytes() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"config file {p} is not UTF-8 text \(byte 0xe9"):
        load_config(p)
    r = run_cli(["run", str(p), "--out", str(tmp_path / "r")], fake_fashion, check=False)
    _one_line_refusal(r, str(p), "not UTF-8")
    bom = tmp_path / "bom.yaml"  # a byte-order mark is UTF-8 and fine
    bom.write_bytes(b"\xef\xbb\xbf" + TINY.read_bytes())
    assert load_config(bom).name == "tiny"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("hack: !!python/object/apply:os.system ['echo x']\n", "not valid YAML"),
        ("train: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML"),
        ("- 1\n", "mapping at the top level"),
        ("1: 2\nname: x\n", "unknown config key 1"),
    ],
)
def test_hostile_yaml_is_one_config_error(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("key", "backbone", "module", "extra"),
    [
        ("model.backbone", "timm:resnet18", "timm", "compatkit[timm]"),
        ("providers.0.backbone", "tv:resnet18", "torchvision", "compatkit[vision]"),
    ],
)
def test_missing_optional_extra_is_one_line_with_pip(
    fake_fashion, tmp_path, key, backbone, module, extra
):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed")
    with pytest.raises(CompatkitError, match=re.escape(f"needs {module}: pip install '{extra}'")):
        load_config(TINY, [f"{key}={backbone}"])
    with pytest.raises(ImportError):  # still an ImportError for library callers
        from compatkit.backbones import build_backbone

        build_backbone(backbone, 3)
    r = run_cli(
        ["run", str(TINY), "--set", f"{key}={backbone}", "--out", str(tmp_path / "r")],
        fake_fashion,
        check=False,
    )
    _one_line_refusal(r, f"pip install '{extra}'")


def test_default_configs_still_valid():
    root = Path(__file__).resolve().parents[1] / "configs"
    for p in sorted(root.glob("*.yaml")):
        load_config(p)
