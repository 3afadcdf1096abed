"""``compatkit convert --from iamcl2r``: files in the exact released layout become compatkit
checkpoints whose features equal the released forward pass; bad or hostile files are refused."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch

from compatkit.checkpoint import load_checkpoint
from compatkit.errors import CheckpointError, InputError
from compatkit.interop import convert_iamcl2r

from ..commands.cli import run_cli
from ..released import released_features, released_net, save_released, with_key_variant

K = 1024


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def simplex_net() -> OrderedDict:
    return released_net("simplex", 100)


@pytest.mark.parametrize("variant", ["plain", "blocks", "module", "bare"])
def test_simplex_features_equal_the_released_forward_pass(tmp_path, simplex_net, variant):
    path = save_released(tmp_path / "ckpt_0.pt", with_key_variant(simplex_net, variant))
    conv = convert_iamcl2r(path, "simplex", classes=100)
    model = conv.model.eval()
    x = _images()
    with torch.no_grad():
        ours = model(x)
        ref = released_features(simplex_net, x)
    assert ref.abs().max() > 0.1  # a meaningful comparison, not of zeros
    torch.testing.assert_close(ours.features, ref, atol=1e-4, rtol=0)
    # Logits through the released classifier: the rebuilt d-Simplex, class c at row c.
    torch.testing.assert_close(ours.logits, ref @ simplex_net["fc2.weight"].t(), atol=1e-4, rtol=0)
    assert conv.dropped == ["args", "best_acc", "optimizer", "scheduler_lr"]
    assert any("fc2.weight" in n and "at most" in n for n in conv.notes)


def test_cli_converts_and_the_checkpoint_carries_the_full_contract(
    tmp_path, simplex_net, fake_fashion
):
    src = save_released(tmp_path / "ckpt_1.pt", with_key_variant(simplex_net, "blocks"))
    out = tmp_path / "p1.pt"
    r = run_cli(
        ["convert", str(src), "--from", "iamcl2r", "--head", "simplex", "--out", str(out),
         "--classes", "300"],
        fake_fashion,
    )  # fmt: skip
    assert f"{src} -> {out}: simplex head, K=1024, resnet18, 1023-d features" in r.stdout
    assert "provider classes 0..299 on rows 0..299 (300 from --classes)" in r.stdout
    assert torch.load(out, weights_only=True)["format"] == "compatkit-checkpoint"
    model, meta = load_checkpoint(out)
    c = meta["contract"]
    assert (c["backbone"], c["in_channels"], c["feat_dim"], c["head"]) == (
        "resnet18",
        3,
        1023,
        "simplex",
    )
    assert (c["num_classes"], c["junction"], c["head_rows"]) == (K, True, K)
    assert model.class_map.provider == {i: i for i in range(300)} and not model.class_map.local
    src_meta = meta["extra"]["source"]
    assert meta["extra"]["role"] == "provider" and src_meta["format"] == "iamcl2r"
    assert src_meta["file"] == "ckpt_1.pt" and src_meta["classes_from"] == "--classes"
    x = _images(4, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval().features(x), released_features(simplex_net, x), atol=1e-4, rtol=0
        )


def test_learnable_model_reads_the_backbone_output_and_keeps_its_classifier(tmp_path):
    net = released_net("learnable", 600, seed=4)
    path = save_released(tmp_path / "ckpt_2.pt", with_key_variant(net, "module"))
    conv = convert_iamcl2r(path, "learnable")  # the classifier tells: 600 rows
    assert (conv.classes, conv.classes_from) == (600, "fc2.weight")
    model = conv.model.eval()
    assert model.junction is None and model.spec.feat_dim == 512
    assert model.class_map.provider == {i: i for i in range(600)}
    x = _images()
    with torch.no_grad():
        out = model(x)
        ref = released_features(net, x)
    assert ref.shape == (6, 512)
    torch.testing.assert_close(out.features, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.logits, ref @ net["fc2.weight"].t(), atol=1e-4, rtol=0)


def test_the_args_object_tells_the_number_of_classes(tmp_path, simplex_net):
    path = save_released(tmp_path / "a.pt", simplex_net, classes_in_args=100)
    conv = convert_iamcl2r(path, "simplex")
    assert (conv.classes, conv.classes_from) == (100, "args.classes_at_task")
    with pytest.raises(InputError, match=r"--classes 300 but .*a.pt says 100"):
        convert_iamcl2r(path, "simplex", classes=300)


def test_a_simplex_file_that_does_not_tell_needs_classes(tmp_path, simplex_net):
    path = save_released(tmp_path / "ckpt_0.pt", simplex_net)
    with pytest.raises(InputError) as e:
        convert_iamcl2r(path, "simplex")
    msg = str(e.value)
    assert msg.startswith(f"{path} does not tell how many classes") and "pass --classes N" in msg


@pytest.mark.parametrize(
    ("mutate", "head", "match"),
    [
        (
            lambda n: n.pop("backbone.layer3.1.bn2.running_var"),
            "simplex",
            r"not the released ResNet-18 backbone \(missing backbone.layer3.1.bn2.running_var\)",
        ),
        (
            lambda n: n.__setitem__("backbone.fc.weight", torch.zeros(1000, 512)),
            "simplex",
            r"unexpected backbone.fc.weight",
        ),
        (
            lambda n: n.__setitem__("backbone.layer1.0.conv1.weight", torch.zeros(64, 64, 5, 5)),
            "simplex",
            r"backbone.layer1.0.conv1.weight has shape \(64, 64, 5, 5\)",
        ),
        (lambda n: n.pop("fc1.weight"), "simplex", r"needs fc1.weight.*--head learnable"),
        (
            lambda n: n.__setitem__("fc2.weight", torch.zeros(10, 10)),
            "simplex",
            r"fc2.weight has shape \(10, 10\), a d-Simplex of K=1024",
        ),
        (
            lambda n: n.__setitem__("extra.weight", torch.zeros(2)),
            "simplex",
            r"unexpected weights extra.weight",
        ),
        (lambda n: None, "learnable", r"reads 1023-d features.*d-Simplex file"),
    ],
)
def test_names_and_shapes_are_verified(tmp_path, simplex_net, mutate, head, match):
    net = OrderedDict(simplex_net)
    mutate(net)
    path = save_released(tmp_path / "bad.pt", net)
    with pytest.raises(CheckpointError, match=match) as e:
        convert_iamcl2r(path, head, classes=100)
    assert str(e.value).startswith(str(path))


def test_classes_out_of_range_are_refused(tmp_path, simplex_net):
    path = save_released(tmp_path / "s.pt", simplex_net)
    with pytest.raises(InputError, match="exceeds the K=1024"):
        convert_iamcl2r(path, "simplex", classes=2000)
    with pytest.raises(InputError, match="--classes must be >= 1"):
        convert_iamcl2r(path, "simplex", classes=0)


def test_cli_refuses_a_hostile_file_without_running_it(tmp_path, simplex_net, fake_fashion):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "ckpt_0.pt"
    torch.save({"net": simplex_net, "args": Payload()}, path)
    r = run_cli(
        ["convert", str(path), "--from", "iamcl2r", "--head", "simplex", "--out",
         str(tmp_path / "o.pt"), "--classes", "100"],
        fake_fashion, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and not marker.exists() and not (tmp_path / "o.pt").exists()
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(
        f"compatkit convert: error: {path}: refusing to load global posix.system"
    )


@pytest.mark.slow
def test_paper_config_runs_with_converted_released_models(tmp_path, fake_fashion):
    """`compatkit run configs/cifar100_7tasks.yaml` end to end, the released models converted
    and given as providers (tiny fake CIFAR-100/10 files, one epoch per task)."""
    import json

    import numpy as np

    from ..test_configs import CONFIGS, write_fake_cifar10, write_fake_cifar100

    rng = np.random.default_rng(0)
    write_fake_cifar100(tmp_path / "c100", rng)  # 4 images per class
    write_fake_cifar10(tmp_path / "c10", rng)
    files = {}
    for head, classes in (("simplex", 100), ("learnable", 100)):
        src = save_released(tmp_path / f"{head}.pt", released_net(head, classes, seed=7))
        files[head] = tmp_path / f"{head}-converted.pt"
        run_cli(
            ["convert", str(src), "--from", "iamcl2r", "--head", head, "--out",
             str(files[head]), "--classes", str(classes)],
            fake_fashion,
        )  # fmt: skip
    sets = [
        f"local.data.root={tmp_path / 'c100'}", "local.data.download=false",
        "local.memory_per_class=2", "train.epochs=1", "eval.batch_size=64",
    ]  # fmt: skip
    for role in ("query", "gallery"):
        sets += [f"eval.{role}.root={tmp_path / 'c10'}", f"eval.{role}.download=false"]
    pair = f"{{simplex: {files['simplex']}, learnable: {files['learnable']}}}"
    sets += [f"providers.{i}.checkpoint={pair}" for i in range(3)]
    out = tmp_path / "run"
    args = ["run", str(CONFIGS / "cifar100_7tasks.yaml"), "--out", str(out), "--quiet"]
    run_cli([*args, *(x for s in sets for x in ("--set", s))], fake_fashion)
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("hoc", "er"):
        assert len(metrics[method]["matrix"]) == 7
    hoc0, meta = load_checkpoint(out / "hoc/seed_42/task_0.pt")
    assert meta["contract"]["backbone"] == "resnet18" and meta["contract"]["num_classes"] == K
    assert set(hoc0.class_map.provider) == set(range(100))  # the released provider's classes
    er2, meta = load_checkpoint(out / "er/seed_42/task_2.pt")  # a replacement: fresh head
    assert meta["contract"]["junction"] is False and meta["contract"]["feat_dim"] == 512
    assert er2.class_map.provider == {} and er2.head.num_rows == 40
